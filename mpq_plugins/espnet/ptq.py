"""Post-training quantization of an ESPnet model: the float weights quantized at their MSE-optimal
steps, no fine-tuning (quant confs with `method: ptq`)."""
from mpq_plugins.confio import read_config
from mpq_plugins.espnet.checkpoint import load_checkpoint, load_state_strict
from mpq_plugins.espnet.load import build_from_config
from mpq_plugins.quant import quantized_modules


def quantize_float_model(float_config, float_model, quant):
    """(quantized model with every step initialised, its config dict) from a float checkpoint."""
    conf = read_config(float_config)
    if conf.get("quantization"):
        raise ValueError(f"{float_config}: already a quantized system (start from the float model)")
    if "mixed_precision" in quant:
        raise ValueError("post-training quantization takes fixed bit-widths (no mixed_precision part)")
    conf = {**conf, "quantization": quant}
    model = build_from_config(conf, float_config)
    state = load_checkpoint(float_model)
    unset = {k: v for k, v in model.state_dict().items() if "_quantizer." in k and k not in state}
    load_state_strict(model, {**state, **unset}, f"{float_model} (with {float_config})")
    for name, mod in quantized_modules(model).items():
        if mod.input_quantizer is not None:
            raise ValueError(f"quantization: act_bits needs calibration data; post-training quantization "
                             f"here covers weights only ({name})")
        mod.weight_quantizer.init_from(mod.weight.detach())
    return model, conf
