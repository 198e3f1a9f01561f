"""Numba kernels: plain loops over arrays, no Python objects, validated by their callers."""
