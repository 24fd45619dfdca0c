"""Measuring primitives: timing, memory, telemetry, ceilings, profiling, FLOP counts, environment."""
