"""One extrapolation run: for each variant, train at L, then evaluate at L x 2^k under each protocol.

Rows (task ``extrapolation``, one per variant, train length, eval length and protocol) go to the run's
store (``bench.sweep.store.RunStore``) beside the speed sweeps. Per variant, ``<run>/extrapolation/<variant>/``
keeps the checkpoint, ``loss.csv`` (the training-loss curve) and ``train.json`` (parameters, wall time,
validation loss at L); ``<run>/extrapolation/split.json`` records the corpus split.

Budget: before each evaluation its time and peak memory are predicted from the previous length of the same
(variant, protocol) series, scaled by the variant's complexity (sum over the windows of length^2 or length,
and batch x length^2 or batch x length for memory); a prediction over ``config_time_limit`` or the memory
limit makes an ``over-budget`` row, with the prediction in the reason, and so does every longer length after
an ``oom`` or ``over-budget`` one. An out-of-memory error becomes an ``oom`` row and the run goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tomllib
import torch
from torch import distributed as dist

from bench.config import BenchConfig
from bench.extrapolation.corpus import TOKENIZER, load_corpus
from bench.extrapolation.evaluate import PROTOCOLS, Score, evaluate, windows
from bench.extrapolation.model import ByteLM, ModelConfig, linear_impl
from bench.extrapolation.train import TrainConfig, train
from bench.measure.environment import collect_environment
from bench.measure.memory import (
    MemoryMeasurementUnavailable,
    available_memory_bytes,
    measure_peak_bytes,
    release_memory,
)
from bench.registry import get_variant
from bench.sweep.executor import classify_failure
from bench.sweep.planner import parse_shard
from bench.sweep.session import new_run_id
from bench.sweep.store import RunStore
from bench.variant import Variant

PRESET_DIR = Path(__file__).resolve().parent / "presets"
TASK = "extrapolation"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation lengths and protocols, the scored stream and the budget (see the module docstring)."""

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
    """A resolved extrapolation preset."""

    name: str
    device: str
    corpus: str
    split_seed: int
    seed: int
    variants: tuple[str, ...]
    model: dict
    train: TrainConfig
    linear_impl: str | None
    eval: EvalConfig
    threads: int | None = None

    def model_config(self, variant: str) -> ModelConfig:
        return ModelConfig(variant=variant, seed=self.seed, **self.model)


def doubling_lengths(train_len: int, max_len: int) -> tuple[int, ...]:
    """L, 2L, 4L, ... up to ``max_len``."""
    if max_len < train_len:
        raise ValueError(f"max eval length {max_len} is below the train length {train_len}")
    return tuple(train_len * 2**k for k in range(int(math.log2(max_len // train_len)) + 1))


def load_extrap_spec(preset: str | None = None, *, device: str | None = None, variants: str | None = None,
                     lengths: str | None = None, steps: int | None = None, corpus: str | None = None,
                     seed: int | None = None, threads: int | None = None) -> ExtrapSpec:
    """The preset (a name in ``presets/`` or a .toml path; default extrap-quick on CPU, extrap-full with
    CUDA) with overrides. Raises ValueError naming an unknown preset, variant, protocol, or an eval length
    below the train length."""
    if preset is None:
        preset = "extrap-full" if torch.cuda.is_available() else "extrap-quick"
    path = Path(preset) if str(preset).endswith(".toml") else PRESET_DIR / f"{preset}.toml"
    if not path.is_file():
        raise ValueError(f"unknown extrapolation preset {preset!r}; names: {preset_names()} or a .toml path")
    raw = tomllib.loads(path.read_text())
    train_raw = dict(raw["train"])
    impl = train_raw.pop("linear_impl", None)
    if steps is not None:
        train_raw["steps"] = steps
        train_raw["warmup_steps"] = min(train_raw.get("warmup_steps", 0), steps)
    train_config = TrainConfig(seed=seed if seed is not None else raw.get("seed", 0), **train_raw)
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
    resolved_device = device or raw.get("device", "auto")
    if resolved_device == "auto":
        resolved_device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = ExtrapSpec(name=raw.get("name", path.stem), device=resolved_device,
                      corpus=corpus or raw.get("corpus", "sotu"), split_seed=raw.get("split_seed", 0),
                      seed=train_config.seed, variants=tuple(names), model=dict(raw["model"]), train=train_config,
                      linear_impl=impl, eval=eval_config, threads=threads or raw.get("threads"))
    spec.model_config(names[0])  # check the model sizes now
    return spec


def row_key(variant: str, train_len: int, eval_len: int, protocol: str) -> str:
    return f"{TASK}|{variant}|L{train_len}|{eval_len}|{protocol}"


def _cost(total: int, length: int, protocol: str, stride: int, quadratic: bool, batch_tokens: int
          ) -> tuple[float, float]:
    """(compute, memory) in the units the predictions scale by: sum over windows of length^2 (or length),
    and windows per forward x length^2 (or x length)."""
    wins = windows(total, length, protocol, stride)
    power = 2 if quadratic else 1
    per_batch = min(len(wins), max(1, batch_tokens // length))
    return float(sum(w.length**power for w in wins)), float(per_batch * length**power)


def setup_distributed() -> torch.device | None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPU) and return this
    rank's device; None when not distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device("cpu")


class ExtrapolationRun:
    """One session of an extrapolation run. ``run_id=None`` starts a new run; an existing id resumes it
    (finished rows are kept, a finished training is loaded, an interrupted one resumes from its checkpoint)."""

    def __init__(self, spec: ExtrapSpec, *, results_dir: str | Path, run_id: str | None = None,
                 shard: str | None = None, progress: bool | None = None) -> None:
        self.spec = spec
        # The corpus first: a bad corpus fails before any run directory exists.
        self.corpus = load_corpus(spec.corpus, seed=spec.split_seed)
        self.train_tokens = self.corpus.tokens("train")
        self.val_tokens = self.corpus.tokens("val")[:spec.eval.eval_tokens + 1]
        test = self.corpus.tokens("test")
        if test.numel() < spec.eval.eval_tokens + 1:
            raise ValueError(f"the test split of {self.corpus.name} has {test.numel()} bytes, fewer than "
                             f"eval_tokens + 1 = {spec.eval.eval_tokens + 1}")
        self.test_tokens = test[:spec.eval.eval_tokens + 1]
        distributed_device = setup_distributed()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.device = distributed_device or torch.device(spec.device)
        # What train and evaluate compute in: bf16 autocast on CUDA, float32 on CPU.
        self.dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if dist.is_initialized():  # every rank must use rank 0's run id
            holder = [run_id or new_run_id()]
            dist.broadcast_object_list(holder, src=0)
            run_id = holder[0]
        self.store = RunStore(results_dir, run_id or new_run_id())
        self.run_id = self.store.run_id
        self.progress = progress
        selected = parse_shard(shard)
        self.variants = [v for i, v in enumerate(spec.variants) if selected is None
                         or i % selected[1] == selected[0] - 1]
        self.device_name: str | None = None
        self.memory_limit = int(spec.eval.memory_fraction * available_memory_bytes(self.device))
        self.dir = self.store.path / TASK
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            env = collect_environment(self.device)
            self.device_name = env["device_name"]
            env.update(run_id=self.run_id, shard=shard, preset=asdict(spec), task=TASK)
            self.store.add_environment(env)
            split = {"corpus": self.corpus.name, "seed": spec.split_seed,
                     **{name: list(self.corpus.split.names(name)) for name in ("train", "val", "test")}}
            (self.dir / "split.json").write_text(json.dumps(split, indent=2))

    # ---- rows -----------------------------------------------------------------------------------------

    def planned_keys(self, variant: str) -> list[tuple[str, int, str]]:
        """(key, eval length, protocol) of every row the variant should have."""
        return [(row_key(variant, self.spec.train.train_len, n, p), n, p)
                for p in self.spec.eval.protocols for n in self.spec.eval.lengths]

    def _base(self, variant: Variant, eval_len: int, protocol: str) -> dict:
        return {"run_id": self.run_id, "key": row_key(variant.name, self.spec.train.train_len, eval_len, protocol),
                "task": TASK, "variant": variant.name, "family": variant.family, "pe": variant.pe,
                "backend": variant.backend, "device": self.device.type, "device_name": self.device_name,
                "dtype": self.dtype,
                "threads": torch.get_num_threads(), "corpus": self.corpus.name, "tokenizer": TOKENIZER,
                "train_len": self.spec.train.train_len, "eval_len": eval_len, "protocol": protocol,
                "stride": self.spec.eval.stride(eval_len, protocol), "steps": self.spec.train.steps,
                "seed": self.spec.seed}

    def _append(self, row: dict) -> dict:
        row["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        if self.rank == 0:
            self.store.append(row)
        return row

    def _status_rows(self, variant: Variant, status: str, reason: str, done: set[str]) -> None:
        for key, n, p in self.planned_keys(variant.name):
            if key not in done:
                self._append({**self._base(variant, n, p), "status": status, "reason": reason})

    # ---- one variant ----------------------------------------------------------------------------------

    def run_variant(self, name: str) -> None:
        """Train and evaluate one variant, under the preset's thread count (restored afterwards, so a pytest
        session's speed sweep keeps its own)."""
        threads = torch.get_num_threads()
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        try:
            self._run_variant(name)
        finally:
            torch.set_num_threads(threads)

    def _run_variant(self, name: str) -> None:
        variant = get_variant(name)
        done = self.store.done_keys()
        if all(key in done for key, _, _ in self.planned_keys(name)):
            return
        if (reason := variant.unavailable_reason()) is not None:
            self._status_rows(variant, "unavailable", reason, done)
            return
        # The registry's own limits for what this run does: a causal LM on this device in this dtype.
        declared = variant.declared_verdict(BenchConfig(variant=name, n=self.spec.train.train_len, d=1,
                                                        dtype=self.dtype, causal=True, device=self.device.type))
        if not declared.runs:
            self._status_rows(variant, declared.status, declared.reason, done)
            return
        try:
            model = self.trained_model(variant)
        except Exception as exc:  # a failed training is a row per planned length, and the run goes on
            status, reason = classify_failure(exc)
            release_memory(self.device)
            self._status_rows(variant, status, f"training failed: {reason}", done)
            return
        if self.rank == 0:
            for protocol in self.spec.eval.protocols:
                self.evaluate_series(variant, model, protocol, done)
        del model
        release_memory(self.device)
        if dist.is_initialized():
            dist.barrier()

    def trained_model(self, variant: Variant) -> ByteLM:
        """The model of ``variant``: trained now, resumed from its checkpoint, or loaded when finished."""
        out = self.dir / variant.name
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        if dist.is_initialized():
            dist.barrier()
        model = ByteLM(self.spec.model_config(variant.name)).to(self.device)
        with linear_impl(model, self.spec.linear_impl):
            result = train(model, self.train_tokens, self.spec.train, device=self.device, out_dir=out,
                           progress=self.progress)
        if self.rank == 0 and result.resumed_from < self.spec.train.steps:
            val = evaluate(model, self.val_tokens, self.spec.train.train_len, "non-overlapping",
                           device=self.device, batch_tokens=self.spec.eval.batch_tokens, seed=self.spec.seed)
            info = {"variant": variant.name, "params": model.num_parameters(), "steps": self.spec.train.steps,
                    "resumed_from": result.resumed_from, "train_wall_s": result.wall_s,
                    "final_train_loss_nats": result.losses[-1], "val_bits_per_byte": val.bits_per_byte,
                    "val_tokens_scored": val.count, "linear_train_impl": self.spec.linear_impl}
            (out / "train.json").write_text(json.dumps(info, indent=2))
        return model  # a finished checkpoint was loaded by train(), which then had no step left

    def evaluate_series(self, variant: Variant, model: ByteLM, protocol: str, done: set[str]) -> None:
        """Rows of one (variant, protocol) at increasing lengths, under the budget."""
        previous: dict | None = None  # the last row of this series (stored earlier or made now)
        stored = {row["key"]: row for row in self.store.rows()}
        total = self.test_tokens.numel()
        quadratic_time = variant.time_complexity == "quadratic"
        quadratic_memory = variant.memory_complexity == "quadratic"
        params = model.num_parameters()
        for n in self.spec.eval.lengths:
            key = row_key(variant.name, self.spec.train.train_len, n, protocol)
            if key in done:
                previous = stored.get(key, previous)
                continue
            row = {**self._base(variant, n, protocol), "params": params}
            stride = row["stride"]
            reason = self._over_budget(previous, n, protocol, stride, total, quadratic_time, quadratic_memory)
            if reason is not None:
                previous = self._append({**row, "status": "over-budget", "reason": reason})
                continue
            started = time.perf_counter()
            try:
                score, peak, note = self._measure(model, n, protocol, stride)
            except Exception as exc:
                release_memory(self.device)
                status, reason = classify_failure(exc)
                previous = self._append({**row, "status": status, "reason": reason,
                                         "wall_s": time.perf_counter() - started})
                continue
            eval_s = time.perf_counter() - started
            previous = self._append({**row, "status": "ok", "reason": note, "tokens_scored": score.count,
                                     "loss_nats": score.loss_nats, "perplexity": score.perplexity,
                                     "bits_per_byte": score.bits_per_byte, "eval_wall_s": eval_s,
                                     "peak_mem_bytes": peak, "wall_s": eval_s})

    def _measure(self, model: ByteLM, n: int, protocol: str, stride: int) -> tuple[Score, int | None, str]:
        result: list[Score] = []

        def run() -> None:
            result.append(evaluate(model, self.test_tokens, n, protocol, stride=stride, device=self.device,
                                   batch_tokens=self.spec.eval.batch_tokens, seed=self.spec.seed))

        try:
            peak: int | None = measure_peak_bytes(run, self.device)
            note = ""
        except MemoryMeasurementUnavailable as exc:
            result.clear()
            run()
            peak, note = None, f"peak memory not measured: {exc}"
        return result[0], peak, note

    def _over_budget(self, previous: dict | None, n: int, protocol: str, stride: int, total: int,
                     quadratic_time: bool, quadratic_memory: bool) -> str | None:
        if previous is None:
            return None
        if previous["status"] in ("oom", "over-budget"):
            return f"length {previous['eval_len']} of this series was {previous['status']}"
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

    # ---- the whole run --------------------------------------------------------------------------------

    def run(self) -> RunStore:
        for name in self.variants:
            self.run_variant(name)
        if self.rank == 0:
            self.store.write_frame()
        return self.store
