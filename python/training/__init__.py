"""Helpers for python/train_generator.py (discriminator; not part of the installed package)."""
