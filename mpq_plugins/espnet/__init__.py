"""The ESPnet adapter: the ASR task with a `quantization:` section, the mixed-precision model, module
groups per encoder type, sensitivities, building and loading (checkpoints and packed files), decoding
and the system record."""
