"""Extrapolation perplexity: train a byte-level LM per attention variant at length L, evaluate at L x 2^k.

corpus (documents, split, bytes) -> model (ByteLM, attention from the registry) -> train -> evaluate
(non-overlapping and sliding windows) -> run (presets, budget, rows in the run store) -> table.
See docs/extrapolation.md.
"""
