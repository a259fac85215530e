"""Fused ops, one folder each: ``reference.py`` (torch, the spec) beside its Triton and compiled twins."""
