"""Fused ops, one folder each: ``reference.py`` (torch, the spec) beside its Triton and compiled twins.

Every op dispatches through ``dispatch.py`` (ordered candidates with availability reasons;
``dispatch.recording()`` collects which implementation ran).
"""
