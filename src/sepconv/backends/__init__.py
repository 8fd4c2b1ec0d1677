"""Execution engines for inference and training, chosen per model or per layer by measurement."""
