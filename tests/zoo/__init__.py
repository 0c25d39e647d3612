"""Test zoo of hand-written NumPy models."""
