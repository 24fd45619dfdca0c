"""Sweep orchestration: presets -> plan -> execute -> store (one way)."""
