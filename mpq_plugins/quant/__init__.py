"""Quantization for ESPnet models: numerics, layers, configuration (`quantize_(model, config)`)."""
from mpq_plugins.quant.config import GROUPS, QuantConfig, QuantConfigError, bit_allocation, quantize_, quantized_modules

__all__ = ["GROUPS", "QuantConfig", "QuantConfigError", "bit_allocation", "quantize_", "quantized_modules"]
