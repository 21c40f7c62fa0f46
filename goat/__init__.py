"""goat: GOAT (SVD-structured LoRA Mixture-of-Experts, ICML 2025) and its baselines, end to end."""

__version__ = "0.1.0"
