"""deal's framework-free engine: reward-guided decoding on local Hugging Face models."""
