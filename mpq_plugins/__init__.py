"""mpq-asr: quantization-aware training and compression plugins for ESPnet ASR recipes."""
