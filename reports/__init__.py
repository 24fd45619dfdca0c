"""Presentation of stored runs: the terminal summary (``summary``) and the HTML report (``render``,
``python -m reports render``). Reads frames through ``bench.sweep.store``; never runs anything."""
