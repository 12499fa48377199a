"""qat-study: quantization-aware training of ViTs vs CNNs."""
