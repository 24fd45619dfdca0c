"""One training of the extrapolation workload: a (variant, seed) trained at L, then scored at every eval length
and protocol, each row handed to a sink the moment it exists (the run's store, or the queue of a worker).

Files, in ``<run>/extrapolation/<variant>/seed-<seed>/``: ``checkpoint.pt`` and ``loss.csv`` (``train.py``),
``train.json`` (parameters, wall time, validation loss at L) and ``scores.json`` (per row, the loss of each
block of 1,024 scored bytes: the paired differences against L come from it, also after a resume).

Evaluation is timed and measured apart:
- the **scoring pass** runs every window (``evaluate.evaluate``), with no memory instrumentation, its time
  the row's ``eval_wall_s``;
- **peak memory** is one forward of the largest batch of windows at that length (what the scoring pass holds
  at its peak), measured by ``bench.measure.memory.measure_peak_bytes`` under its allocator regime (every
  block its own mmap: far too slow for the whole pass).
- explicit-score softmax cores (``@naive``) score through their FlashAttention twin (``flash*@sdpa-flash``,
  the same function: ``test_eval_twin_equals_the_naive_core``), whose cost grows like the flash kernel's, not
  like N^2 materialised scores; the row's ``eval_backend`` names what ran, and its peak memory is that path's.

Budget: before each length its time and peak memory are predicted from the previous length of the same
(variant, protocol) series, scaled by the variant's complexity (sum over the windows of length^2 or length,
and batch x length^2 or batch x length for memory); a prediction over ``config_time_limit`` or the memory
limit makes an ``over-budget`` row, with the prediction in the reason, and so does every longer length after
an ``oom`` or ``over-budget`` one. An out-of-memory error becomes an ``oom`` row and the series goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import distributed as dist

from bench.config import BenchConfig
from bench.extrapolation.corpus import TOKENIZER
from bench.extrapolation.evaluate import Score, evaluate, forward_peak_input, paired_difference, windows
from bench.extrapolation.model import ByteLM, linear_impl
from bench.extrapolation.spec import TASK, ExtrapSpec, row_key
from bench.extrapolation.train import train
from bench.measure.memory import MemoryMeasurementUnavailable, measure_peak_bytes, release_memory
from bench.registry import get_variant
from bench.sweep.executor import classify_failure
from bench.sweep.planner import first_stop
from bench.variant import AttentionSpec, Variant

SCORES_FILE = "scores.json"
TRAIN_INFO = "train.json"
Sink = Callable[[dict], None]
StepHook = Callable[[int, float], None]


def job_dir(run_dir: Path, variant: str, seed: int) -> Path:
    """Where one training keeps its checkpoint, loss curve, train.json and scores.json."""
    return run_dir / TASK / variant / f"seed-{seed}"


def eval_twin(variant: Variant) -> Variant | None:
    """The FlashAttention variant that computes the same function as an explicit-score softmax variant
    (``softmax[-pe]@naive`` -> ``flash[-pe]@sdpa-flash``), when it can run here; None for any other."""
    if variant.family != "softmax" or variant.backend != "naive":
        return None
    twin = get_variant(f"flash{'' if variant.pe == 'none' else '-' + variant.pe}@sdpa-flash")
    return twin if twin.unavailable_reason() is None else None


@contextmanager
def cores_of(model: ByteLM, twin: Variant | None) -> Iterator[str]:
    """Within the block, every attention core of ``model`` is ``twin``'s (None: its own). Only cores that hold
    no parameters are swapped (softmax cores hold none): a model's weights never change. Yields the backend
    that runs."""
    if twin is None:
        yield model.variant.backend
        return
    saved = []
    for i, block in enumerate(model.blocks):
        attn = block.attn
        if any(True for _ in attn.core.parameters()):
            raise ValueError(f"{model.variant.name}'s core holds parameters: it has no parameter-free twin")
        spec = AttentionSpec(head_dim=attn.head_dim, num_heads=attn.n_heads, causal=True,
                             seed=model.config.seed + i)
        saved.append(attn.core)
        attn.core = twin.builder(spec).to(next(model.parameters()).device)
    try:
        yield twin.backend
    finally:
        for block, core in zip(model.blocks, saved, strict=True):
            block.attn.core = core


def _cost(total: int, length: int, protocol: str, stride: int, quadratic: bool, batch_tokens: int
          ) -> tuple[float, float]:
    """(compute, memory) in the units the predictions scale by: sum over windows of length^2 (or length),
    and windows per forward x length^2 (or x length)."""
    wins = windows(total, length, protocol, stride)
    power = 2 if quadratic else 1
    per_batch = min(len(wins), max(1, batch_tokens // length))
    return float(sum(w.length**power for w in wins)), float(per_batch * length**power)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class TrainingJob:
    """Train (or resume, or load) one (variant, seed) and score it; rows go to ``sink`` one at a time.

    ``stored``: rows of this run already in the store (key -> row): their configs are skipped, and they seed
    the budget's series. ``write_files``: this process writes the job's files (rank 0 under DDP).
    """

    def __init__(self, spec: ExtrapSpec, variant: str, seed: int, *, run_dir: Path, run_id: str,
                 device: torch.device, device_name: str | None, memory_limit: int, corpus,
                 stored: dict[str, dict], sink: Sink, write_files: bool = True, progress: bool | None = None,
                 on_step: StepHook | None = None) -> None:
        self.spec, self.seed = spec, seed
        self.variant = get_variant(variant)
        self.run_id, self.device, self.device_name = run_id, device, device_name
        self.memory_limit = memory_limit
        self.corpus = corpus
        self.train_tokens = corpus.tokens("train")
        self.val_tokens = corpus.tokens("val")[:spec.eval.eval_tokens + 1]
        self.test_tokens = corpus.tokens("test")[:spec.eval.eval_tokens + 1]
        self.stored, self.sink = stored, sink
        self.write_files, self.progress, self.on_step = write_files, progress, on_step
        self.dir = job_dir(run_dir, variant, seed)
        # Peak memory per eval length: both protocols run the same forward (batch_tokens // length windows of
        # the length), so the second protocol reuses the first one's measurement.
        self._peaks: dict[int, tuple[int | None, str]] = {}
        # What train and evaluate compute in: bf16 autocast on CUDA, float32 on CPU.
        self.dtype = "bfloat16" if device.type == "cuda" else "float32"

    # ---- rows -----------------------------------------------------------------------------------------

    def planned_keys(self) -> list[tuple[str, int, str]]:
        """(key, eval length, protocol) of every row this job should have."""
        return [(row_key(self.variant.name, self.spec.train.train_len, n, p, self.seed), n, p)
                for p in self.spec.eval.protocols for n in self.spec.eval.lengths]

    def _base(self, eval_len: int, protocol: str) -> dict:
        v = self.variant
        return {"run_id": self.run_id, "key": row_key(v.name, self.spec.train.train_len, eval_len, protocol, self.seed),
                "task": TASK, "variant": v.name, "family": v.family, "pe": v.pe, "backend": v.backend,
                "device": self.device.type, "device_name": self.device_name, "dtype": self.dtype,
                "threads": torch.get_num_threads(), "corpus": self.corpus.name, "tokenizer": TOKENIZER,
                "train_len": self.spec.train.train_len, "eval_len": eval_len, "protocol": protocol,
                "stride": self.spec.eval.stride(eval_len, protocol), "steps": self.spec.train.steps,
                "seed": self.seed}

    def _emit(self, row: dict) -> dict:
        row["finished_utc"] = _now()
        self.sink(row)
        return row

    def status_rows(self, status: str, reason: str) -> None:
        for key, n, p in self.planned_keys():
            if key not in self.stored:
                self._emit({**self._base(n, p), "status": status, "reason": reason})

    # ---- the job --------------------------------------------------------------------------------------

    def run(self) -> None:
        """Train and evaluate; every planned row that is not stored yet is emitted (ok or with a status)."""
        if all(key in self.stored for key, _, _ in self.planned_keys()):
            return
        if (reason := self.variant.unavailable_reason()) is not None:
            self.status_rows("unavailable", reason)
            return
        # The registry's own limits for what this run does: a causal LM on this device in this dtype.
        declared = self.variant.declared_verdict(BenchConfig(variant=self.variant.name, n=self.spec.train.train_len,
                                                             d=1, dtype=self.dtype, causal=True,
                                                             device=self.device.type))
        if not declared.runs:
            self.status_rows(declared.status, declared.reason)
            return
        try:
            model, train_wall = self.trained_model()
        except Exception as exc:  # a failed training is a row per planned length, and the run goes on
            status, reason = classify_failure(exc)
            release_memory(self.device)
            self.status_rows(status, f"training failed: {reason}")
            return
        if self.write_files:
            for protocol in self.spec.eval.protocols:
                self.evaluate_series(model, protocol, train_wall)
        del model
        release_memory(self.device)

    def trained_model(self) -> tuple[ByteLM, float | None]:
        """The model: trained now, resumed from its checkpoint, or loaded when finished; and the training's
        wall seconds (from train.json when it finished in an earlier session)."""
        if self.write_files:
            self.dir.mkdir(parents=True, exist_ok=True)
        if dist.is_initialized():
            dist.barrier()
        model = ByteLM(self.spec.model_config(self.variant.name, self.seed)).to(self.device)
        with linear_impl(model, self.spec.linear_impl):
            result = train(model, self.train_tokens, self.spec.train_config(self.seed), device=self.device,
                           out_dir=self.dir, progress=self.progress, on_step=self.on_step)
        info_path = self.dir / TRAIN_INFO
        if self.write_files and result.resumed_from < self.spec.train.steps:
            val = evaluate(model, self.val_tokens, self.spec.train.train_len, "non-overlapping",
                           device=self.device, batch_tokens=self.spec.eval.batch_tokens, seed=self.seed)
            info = {"variant": self.variant.name, "seed": self.seed, "params": model.num_parameters(),
                    "steps": self.spec.train.steps, "batch_size": self.spec.train.batch_size,
                    "resumed_from": result.resumed_from, "train_wall_s": result.wall_s,
                    "threads": torch.get_num_threads(), "final_train_loss_nats": result.losses[-1],
                    "val_bits_per_byte": val.bits_per_byte, "val_bits_per_byte_se": _bits(val.loss_se),
                    "val_tokens_scored": val.count, "linear_train_impl": self.spec.linear_impl}
            _write_json(info_path, info)
            return model, result.wall_s
        wall = json.loads(info_path.read_text()).get("train_wall_s") if info_path.exists() else None
        return model, wall

    def evaluate_series(self, model: ByteLM, protocol: str, train_wall: float | None) -> None:
        """Rows of one protocol at increasing lengths, under the budget."""
        previous: dict | None = None  # the last row of this series (stored earlier or made now)
        total = self.test_tokens.numel()
        quadratic_time = self.variant.time_complexity == "quadratic"
        quadratic_memory = self.variant.memory_complexity == "quadratic"
        params = model.num_parameters()
        twin = eval_twin(self.variant)
        if twin is not None:  # the twin's kernel sets the cost of what runs
            quadratic_time, quadratic_memory = True, twin.memory_complexity == "quadratic"
        scores = self._load_scores()
        for n in self.spec.eval.lengths:
            key = row_key(self.variant.name, self.spec.train.train_len, n, protocol, self.seed)
            if key in self.stored:
                previous = self.stored[key]
                continue
            row = {**self._base(n, protocol), "params": params, "train_wall_s": train_wall}
            stride = row["stride"]
            reason = self._over_budget(previous, n, protocol, stride, total, quadratic_time, quadratic_memory)
            if reason is not None:
                previous = self._emit({**row, "status": "over-budget", "reason": reason})
                continue
            started = time.perf_counter()
            try:
                with cores_of(model, twin) as backend:
                    score, eval_s = self._score(model, n, protocol, stride)
                    peak, note = self._peak(model, n)
            except Exception as exc:
                release_memory(self.device)
                status, reason = classify_failure(exc)
                previous = self._emit({**row, "status": status, "reason": reason,
                                       "wall_s": time.perf_counter() - started})
                continue
            scores[f"{protocol}|{n}"] = {"block_sums": score.block_sums, "block_counts": score.block_counts}
            self._save_scores(scores)
            if twin is not None:
                note = "; ".join(x for x in (f"scored through {twin.name}, the same function (tested)", note) if x)
            row.update(status="ok", reason=note, eval_backend=backend, tokens_scored=score.count,
                       loss_nats=score.loss_nats, loss_se_nats=score.loss_se, perplexity=score.perplexity,
                       bits_per_byte=score.bits_per_byte, bits_per_byte_se=_bits(score.loss_se),
                       eval_wall_s=eval_s, scored_bytes_per_s=score.count / eval_s, peak_mem_bytes=peak,
                       wall_s=time.perf_counter() - started)
            base = scores.get(f"{protocol}|{self.spec.train.train_len}")
            if base is not None:
                delta, delta_se = paired_difference(score, Score.from_blocks(base["block_sums"],
                                                                             base["block_counts"]))
                row.update(bpb_vs_train_len=delta / math.log(2), bpb_vs_train_len_se=_bits(delta_se))
            previous = self._emit(row)

    def _score(self, model: ByteLM, n: int, protocol: str, stride: int) -> tuple[Score, float]:
        started = time.perf_counter()
        score = evaluate(model, self.test_tokens, n, protocol, stride=stride, device=self.device,
                         batch_tokens=self.spec.eval.batch_tokens, seed=self.seed)
        return score, time.perf_counter() - started

    def _peak(self, model: ByteLM, n: int) -> tuple[int | None, str]:
        """Peak memory of one forward of the scoring pass's largest batch at length ``n`` (measured once per
        length: the protocols' batches are the same)."""
        if n not in self._peaks:
            self._peaks[n] = self._measure_peak(model, n)
        return self._peaks[n]

    def _measure_peak(self, model: ByteLM, n: int) -> tuple[int | None, str]:
        inputs = forward_peak_input(self.test_tokens, n, self.spec.eval.batch_tokens, self.device)

        @torch.no_grad()
        def forward() -> None:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                enabled=self.device.type == "cuda"):
                model(inputs)

        try:
            return measure_peak_bytes(forward, self.device), ""
        except MemoryMeasurementUnavailable as exc:
            return None, f"peak memory not measured: {exc}"

    def _over_budget(self, previous: dict | None, n: int, protocol: str, stride: int, total: int,
                     quadratic_time: bool, quadratic_memory: bool) -> str | None:
        if previous is None:
            return None
        # the sweep's rule; the previous length suffices: after a stop every length is over-budget
        stop = first_stop([previous], "eval_len")
        if stop is not None:
            return f"length {stop['eval_len']} of this series was {stop['status']}"
        if previous["status"] != "ok" or previous.get("eval_wall_s") is None:
            return None
        m, ps = previous["eval_len"], previous["stride"]
        batch = self.spec.eval.batch_tokens
        time_now, _ = _cost(total, n, protocol, stride, quadratic_time, batch)
        time_then, _ = _cost(total, m, protocol, ps, quadratic_time, batch)
        _, mem_then = _cost(total, m, protocol, ps, quadratic_memory, batch)
        _, mem_now = _cost(total, n, protocol, stride, quadratic_memory, batch)
        predicted_s = previous["eval_wall_s"] * time_now / time_then
        if predicted_s > self.spec.eval.config_time_limit:
            return (f"predicted {predicted_s:.1f} s > config time limit {self.spec.eval.config_time_limit:g} s "
                    f"(from {previous['eval_wall_s']:.2f} s at length {m})")
        if previous.get("peak_mem_bytes") is not None:
            predicted_b = previous["peak_mem_bytes"] * mem_now / mem_then
            if predicted_b > self.memory_limit:
                return (f"predicted peak {predicted_b / 2**20:.0f} MiB > memory limit "
                        f"{self.memory_limit / 2**20:.0f} MiB (from {previous['peak_mem_bytes'] / 2**20:.0f} MiB "
                        f"at length {m})")
        return None

    # ---- scores.json ----------------------------------------------------------------------------------

    def _load_scores(self) -> dict:
        path = self.dir / SCORES_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_scores(self, scores: dict) -> None:
        _write_json(self.dir / SCORES_FILE, scores)


def _bits(nats: float | None) -> float | None:
    return None if nats is None else nats / math.log(2)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
