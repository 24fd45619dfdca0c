"""Extrapolation presets (``presets/*.toml``) resolved with the command line's overrides into an ``ExtrapSpec``.

A preset holds the model sizes (``[model]``), the training (``[train]``: ``TrainConfig``'s fields plus
``linear_impl``, the form the linear cores train in), the evaluation (``[eval]``: ``EvalConfig``'s fields plus
``max_len``) and, at the top, the variants, device, corpus, seeds, intra-op ``threads`` and ``workers`` (how many
(variant, seed) trainings run at once, each in its own process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import tomllib

from bench.extrapolation.evaluate import PROTOCOLS
from bench.extrapolation.model import ModelConfig
from bench.extrapolation.train import TrainConfig
from bench.registry import get_variant
from bench.sweep.presets import find_preset, resolve_device
from bench.sweep.presets import preset_names as sweep_preset_names

PRESET_DIR = Path(__file__).resolve().parent / "presets"
TASK = "extrapolation"


def preset_names() -> list[str]:
    """The extrapolation presets' names (``bench/extrapolation/presets``)."""
    return sweep_preset_names(PRESET_DIR)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation lengths and protocols, the scored stream and the budget (``bench.extrapolation.job``)."""

    lengths: tuple[int, ...]
    protocols: tuple[str, ...] = PROTOCOLS
    stride_fraction: float = 0.5
    eval_tokens: int = 8192
    batch_tokens: int = 8192
    config_time_limit: float = 60.0
    memory_fraction: float = 0.5

    def stride(self, length: int, protocol: str) -> int:
        """The sliding stride at ``length`` (the length itself when non-overlapping)."""
        return max(1, int(length * self.stride_fraction)) if protocol == "sliding" else length


@dataclass(frozen=True)
class ExtrapSpec:
    """A resolved extrapolation preset. ``seeds``: one training per (variant, seed); every variant of one seed
    trains on the same batches in the same order. ``workers``: trainings run at once, one process each (1: in
    this process)."""

    name: str
    device: str
    corpus: str
    split_seed: int
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    model: dict
    train: TrainConfig
    linear_impl: str | None
    eval: EvalConfig
    threads: int | None = None
    workers: int = 1

    @property
    def seed(self) -> int:
        """The first seed (the one a single-seed run uses)."""
        return self.seeds[0]

    def model_config(self, variant: str, seed: int | None = None) -> ModelConfig:
        return ModelConfig(variant=variant, seed=self.seed if seed is None else seed, **self.model)

    def train_config(self, seed: int) -> TrainConfig:
        """The training of ``seed``: the preset's, with its data order drawn from ``seed``."""
        return replace(self.train, seed=seed)


def doubling_lengths(train_len: int, max_len: int) -> tuple[int, ...]:
    """L, 2L, 4L, ... up to ``max_len``."""
    if max_len < train_len:
        raise ValueError(f"max eval length {max_len} is below the train length {train_len}")
    return tuple(train_len * 2**k for k in range(int(math.log2(max_len // train_len)) + 1))


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def load_extrap_spec(preset: str | None = None, *, device: str | None = None, variants: str | None = None,
                     lengths: str | None = None, steps: int | None = None, corpus: str | None = None,
                     seed: int | None = None, seeds: int | None = None, threads: int | None = None,
                     workers: int | None = None) -> ExtrapSpec:
    """The preset (a name in ``presets/`` or a .toml path, found as the sweep finds its presets; default
    extrap-quick on CPU, extrap-full on CUDA, the device chosen as the sweep chooses it) with overrides.
    ``seed`` is the first seed, ``seeds`` how many (seed, seed + 1, ...). Raises ValueError naming an unknown
    preset, device, variant, protocol, an eval length below the train length, or a count below 1."""
    for name, value in (("seeds", seeds), ("threads", threads), ("workers", workers), ("steps", steps)):
        _positive(name, value)
    if preset is None:
        preset = "extrap-full" if resolve_device(device) == "cuda" else "extrap-quick"
    path = find_preset(preset, PRESET_DIR)
    raw = tomllib.loads(path.read_text())
    train_raw = dict(raw["train"])
    impl = train_raw.pop("linear_impl", None)
    if steps is not None:
        train_raw["steps"] = steps
        train_raw["warmup_steps"] = min(train_raw.get("warmup_steps", 0), steps)
        train_raw["checkpoint_every"] = min(train_raw.get("checkpoint_every", steps), steps)
    first_seed = seed if seed is not None else raw.get("seed", 0)
    train_config = TrainConfig(seed=first_seed, **train_raw)
    eval_raw = dict(raw["eval"])
    max_len = eval_raw.pop("max_len")
    if lengths is not None:
        from bench.config import parse_sizes
        chosen = tuple(parse_sizes(lengths))
    else:
        chosen = doubling_lengths(train_config.train_len, max_len)
    for length in chosen:
        if length < train_config.train_len:
            raise ValueError(f"eval length {length} is below the train length {train_config.train_len}")
    eval_config = EvalConfig(lengths=chosen, **{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in eval_raw.items()})
    for protocol in eval_config.protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if max(chosen) > eval_config.eval_tokens:
        raise ValueError(f"eval length {max(chosen)} exceeds eval_tokens {eval_config.eval_tokens}: every "
                         "length scores the same stream, which must hold one window of the longest")
    names = raw["variants"]
    if variants is not None:
        from bench.registry import select_variants
        names = [v.name for v in select_variants(variants)]
    for name in names:
        get_variant(name)
    resolved_device = resolve_device(device if device is not None else raw.get("device", "auto"))
    count = seeds if seeds is not None else raw.get("seeds", 1)
    _positive("seeds", count)
    spec = ExtrapSpec(name=raw.get("name", path.stem), device=resolved_device,
                      corpus=corpus or raw.get("corpus", "sotu"), split_seed=raw.get("split_seed", 0),
                      seeds=tuple(range(first_seed, first_seed + count)), variants=tuple(names),
                      model=dict(raw["model"]), train=train_config, linear_impl=impl, eval=eval_config,
                      threads=threads or raw.get("threads"), workers=workers or raw.get("workers", 1))
    _positive("workers", spec.workers)
    spec.model_config(names[0])  # check the model sizes now
    return spec


def row_key(variant: str, train_len: int, eval_len: int, protocol: str, seed: int = 0) -> str:
    """The row's stable key; seed 0 keeps the key of runs made before seeds were a dimension."""
    return f"{TASK}|{variant}|L{train_len}|{eval_len}|{protocol}" + (f"|s{seed}" if seed else "")
