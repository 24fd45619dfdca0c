"""Sweep specifications: a preset (TOML, in ``bench/presets/``) with the user's overrides applied.

A preset names variants (exact names or globs), sizes, dtypes, passes, the run's limits and timing settings.
Overrides come from ``python -m bench run`` flags and from the same pytest options (root conftest.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomllib

from bench.config import BenchConfig, parse_bool_list, parse_dtype, parse_pass_list, parse_size, parse_sizes

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"

SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def preset_names(directory: Path = PRESET_DIR) -> list[str]:
    """The names of the presets in ``directory`` (the sweep's by default)."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def parse_bytes(text: str | int) -> int:
    """'8GiB' -> 8589934592, '512m' -> 536870912, 1000 -> 1000."""
    if isinstance(text, int):
        return text
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("kmgib")
    unit = raw[len(number):]
    if unit not in SIZE_UNITS or not number:
        raise ValueError(f"memory size must look like 512MiB, 8GiB or a byte count, got {text!r}")
    return int(float(number) * SIZE_UNITS[unit])


@dataclass(frozen=True)
class Limits:
    """What the planner may spend. config_seconds: predicted seconds of one config's calls (warm-up, timed
    repeats and the memory pass); total_seconds: the whole run; memory: bytes one config may take at its
    peak (None: ``memory_fraction`` of the memory available when the run starts)."""

    config_seconds: float = 30.0
    total_seconds: float = 3600.0
    memory_bytes: int | None = None
    memory_fraction: float = 0.6


@dataclass(frozen=True)
class SweepSpec:
    """A resolved sweep: the cartesian product of its lists, with ``batch`` raised at short N when
    ``tokens_per_batch`` is set (batch = max(1, tokens_per_batch // N), so batch x N stays constant)."""

    name: str
    device: str
    variants: tuple[str, ...]
    n: tuple[int, ...]
    d: tuple[int, ...]
    dtype: tuple[str, ...]
    causal: tuple[bool, ...]
    passes: tuple[str, ...]
    heads: int = 4
    batch: int = 1
    tokens_per_batch: int | None = None
    seed: int = 0
    limits: Limits = field(default_factory=Limits)
    timing: dict = field(default_factory=dict)

    def batch_for(self, n: int) -> int:
        if self.tokens_per_batch:
            return max(1, self.tokens_per_batch // n)
        return self.batch

    def configs(self) -> list[BenchConfig]:
        """Every config, interleaved by N: every variant, dtype, pass, causal mode and D at the smallest N,
        then all of them at the next N, and so on. A run that stops early (time limit, a kill) has covered
        every variant up to some N rather than some variants at every N; within a series N still grows, so
        the planner predicts each config from the smaller ones of its series measured before it."""
        out = []
        for n, variant, dtype, pass_, causal, d in itertools.product(
                sorted(self.n), self.variants, self.dtype, self.passes, self.causal, self.d):
            out.append(BenchConfig(variant=variant, n=n, d=d, batch=self.batch_for(n), heads=self.heads,
                                   dtype=dtype, causal=causal, pass_=pass_, device=self.device))
        return out

    def as_dict(self) -> dict:
        """JSON-ready form, stored with the run's environment."""
        return {
            "name": self.name, "device": self.device, "variants": list(self.variants), "n": list(self.n),
            "d": list(self.d), "dtype": list(self.dtype), "causal": list(self.causal),
            "pass": list(self.passes), "heads": self.heads, "batch": self.batch,
            "tokens_per_batch": self.tokens_per_batch, "seed": self.seed,
            "limits": self.limits.__dict__, "timing": dict(self.timing),
        }


def find_preset(name_or_path: str, directory: Path = PRESET_DIR) -> Path:
    """The preset file of a name in ``directory`` (the sweep's presets by default; the extrapolation's are in
    ``bench/extrapolation/presets``) or of a path to a .toml file. Raises ValueError naming the value and the
    names there are."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    candidate = directory / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    raise ValueError(f"preset must be one of {preset_names(directory)} or a path to a .toml file, "
                     f"got {name_or_path!r}")


def default_preset(device: str) -> str:
    """quick on a CPU, full on a GPU."""
    return "full" if device == "cuda" else "quick"


def resolve_device(text: str | None) -> str:
    """'auto' (or None) -> 'cuda' when a GPU is visible, else 'cpu'; the device choice of sweeps and
    extrapolation runs alike. Raises ValueError for anything but cpu, cuda or auto."""
    import torch

    if text in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {text!r}")
    return text


def load_spec(preset: str | None = None, *, device: str | None = None, overrides: dict | None = None) -> SweepSpec:
    """Read a preset and apply overrides.

    overrides keys (all optional, None means keep the preset's): n, d, variants, dtype, causal, pass,
    heads, batch, tokens_per_batch, seed, time_limit (total seconds), config_time_limit, memory_limit.
    Variant patterns are resolved against the registry here, so a typo fails before any work starts.
    """
    from bench.registry import select_variants

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if preset is None:
        preset = default_preset(resolve_device(device))
    path = find_preset(preset)
    data = tomllib.loads(path.read_text())
    resolved_device = resolve_device(device if device is not None else data.get("device", "auto"))

    def pick(key: str, default=None):
        return overrides.get(key, data.get(key, default))

    limits_data = dict(data.get("limits", {}))
    limits = Limits(
        config_seconds=float(overrides.get("config_time_limit", limits_data.get("config_seconds", 30.0))),
        total_seconds=float(overrides.get("time_limit", limits_data.get("total_seconds", 3600.0))),
        memory_bytes=(parse_bytes(overrides["memory_limit"]) if "memory_limit" in overrides
                      else parse_bytes(limits_data["memory_bytes"]) if "memory_bytes" in limits_data else None),
        memory_fraction=float(limits_data.get("memory_fraction", 0.6)),
    )
    variants = pick("variants", ["*"])
    if isinstance(variants, str):
        variants = [v for v in variants.split(",") if v.strip()]
    dtypes = pick("dtype", ["float32"])
    dtypes = [parse_dtype(x) for x in (dtypes.split(",") if isinstance(dtypes, str) else dtypes)]
    tokens = pick("tokens_per_batch")
    return replace(
        SweepSpec(
            name=path.stem,
            device=resolved_device,
            variants=tuple(v.name for v in select_variants(variants)),
            n=tuple(parse_sizes(pick("n", ["1k..8k"]))),
            d=tuple(parse_sizes(pick("d", [64]))),
            dtype=tuple(dict.fromkeys(dtypes)),
            causal=tuple(parse_bool_list(pick("causal", [True]))),
            passes=tuple(parse_pass_list(pick("pass", ["fwd"]))),
            heads=int(pick("heads", 4)),
            batch=int(pick("batch", 1)),
            tokens_per_batch=parse_size(tokens) if tokens else None,
            seed=int(pick("seed", 0)),
        ),
        limits=limits,
        timing=dict(data.get("timing", {})),
    )
