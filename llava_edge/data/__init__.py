"""Data in the LLaVA JSON format: the synthetic shapes generator and its validator."""
