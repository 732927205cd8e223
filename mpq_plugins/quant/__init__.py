"""Quantization for torch models, usable without ESPnet: numerics, layers, `quantize_(model, config,
groups)`, mixed-precision candidates, bit allocation, sensitivities, the packed file, int8 serving."""
from mpq_plugins.quant.config import MixedPrecisionConfig, QuantConfig, QuantConfigError, quantize_, with_fixed_bits
from mpq_plugins.quant.layers import bit_allocation, quantized_modules

__all__ = ["MixedPrecisionConfig", "QuantConfig", "QuantConfigError", "bit_allocation", "quantize_",
           "quantized_modules", "with_fixed_bits"]
