"""One extrapolation run: for each (variant, seed), train at L, then evaluate at L x 2^k under each protocol.

Rows (task ``extrapolation``, one per variant, seed, train length, eval length and protocol) go to the run's
store (``bench.sweep.store.RunStore``) beside the speed sweeps; this process alone writes them. The trainings
(``bench.extrapolation.job.TrainingJob``) run in this process, or, with ``workers`` > 1 on a CPU, in that many
worker processes of ``threads`` intra-op threads each, which send each row back over a queue the moment it
exists (nothing of a finished length is lost when the run is killed). Why processes rather than threads: at
this model's size one process per core keeps both cores busy with no OpenMP barrier between them, and on a
machine shared with other jobs it degrades by the share it loses, where two threads of one process can stall
at every barrier (docs/extrapolation.md has the measurements).
``<run>/extrapolation/split.json`` records the corpus split.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_module
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
from torch import distributed as dist

from bench.extrapolation.corpus import load_corpus
from bench.extrapolation.job import TRAIN_INFO, TrainingJob, job_dir
from bench.extrapolation.spec import TASK, ExtrapSpec, row_key
from bench.measure.environment import collect_environment
from bench.process import process_settings
from bench.record import Row
from bench.sweep.executor import classify_failure
from bench.sweep.planner import memory_limit, parse_shard, take_shard
from bench.sweep.session import new_run_id
from bench.sweep.store import RunStore, first_per_key


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
        test = self.corpus.tokens("test")
        if test.numel() < spec.eval.eval_tokens + 1:
            raise ValueError(f"the test split of {self.corpus.name} has {test.numel()} bytes, fewer than "
                             f"eval_tokens + 1 = {spec.eval.eval_tokens + 1}")
        distributed_device = setup_distributed()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.device = distributed_device or torch.device(spec.device)
        if dist.is_initialized():  # every rank must use rank 0's run id
            holder = [run_id or new_run_id()]
            dist.broadcast_object_list(holder, src=0)
            run_id = holder[0]
        self.store = RunStore(results_dir, run_id or new_run_id())
        self.run_id = self.store.run_id
        self.progress = progress
        self.tasks = tasks(spec, parse_shard(shard))
        """(variant, seed) of every training this session runs (its shard's)."""
        self.variants = list(dict.fromkeys(variant for variant, _ in self.tasks))
        """The variants of those trainings, in preset order."""
        # Worker processes on a CPU only: on a GPU they would share one device, and under DDP the ranks are
        # the parallelism.
        self.workers = spec.workers if self.device.type == "cpu" and not dist.is_initialized() else 1
        self.device_name: str | None = None
        # Each concurrent training gets its share of the memory free now.
        self.memory_limit = memory_limit(self.device, spec.eval.memory_fraction, share=self.workers)
        self.dir = self.store.path / TASK
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            env = collect_environment(self.device)
            self.device_name = env["device_name"]
            env.update(run_id=self.run_id, shard=shard, preset=asdict(spec), task=TASK, workers=self.workers)
            self.store.add_environment(env)
            split = {"corpus": self.corpus.name, "seed": spec.split_seed,
                     **{name: list(self.corpus.split.names(name)) for name in ("train", "val", "test")}}
            (self.dir / "split.json").write_text(json.dumps(split, indent=2))

    # ---- jobs -----------------------------------------------------------------------------------------

    def _job(self, variant: str, seed: int, stored: dict[str, dict], **hooks) -> TrainingJob:
        return TrainingJob(self.spec, variant, seed, run_dir=self.store.path, run_id=self.run_id,
                           device=self.device, device_name=self.device_name, memory_limit=self.memory_limit,
                           corpus=self.corpus, stored=stored, sink=self._append, write_files=self.rank == 0,
                           **hooks)

    def _append(self, row: dict) -> None:
        if self.rank == 0:
            self.store.append(row)

    def _stored(self) -> dict[str, Row]:
        """The run's stored rows by key (one per key: ``first_per_key``, as the store reads them)."""
        return first_per_key(self.store.rows())

    def run_variant(self, name: str) -> None:
        """Train and evaluate every seed of one variant that this session runs, in this process, under the
        preset's thread count (restored afterwards, so a pytest session's speed sweep keeps its own)."""
        with process_settings(threads=self.spec.threads):
            for seed in [s for v, s in self.tasks if v == name]:
                self._job(name, seed, self._stored(), progress=self.progress).run()
                if dist.is_initialized():
                    dist.barrier()

    # ---- the whole run --------------------------------------------------------------------------------

    def run(self) -> RunStore:
        stored = self._stored()
        pending = [task for task in self.tasks if not _finished(self.spec, task, stored)]
        if self.workers > 1 and len(pending) > 1:
            self._run_in_workers(pending, stored)
        else:
            for name in self.variants:
                self.run_variant(name)
        if self.rank == 0:
            self.store.write_frame()
        return self.store

    def _run_in_workers(self, jobs: list[tuple[str, int]], stored: dict[str, dict]) -> None:
        """Every job in a pool of ``workers`` processes; rows come back over a queue and are stored here as
        they arrive. A worker that dies (or a job that raises) leaves rows with the reason for its configs."""
        from tqdm import tqdm

        context = multiprocessing.get_context("spawn")  # fork after torch's thread pools exist can deadlock
        workers = min(self.workers, len(jobs))
        steps_total = len(jobs) * self.spec.train.steps
        bar = tqdm(total=steps_total, unit="step", dynamic_ncols=True, disable=True if self.progress is False else None,
                   desc=f"{len(jobs)} trainings, {workers} workers")
        with context.Manager() as manager:
            messages = manager.Queue()
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures: dict[Future, tuple[str, int]] = {}
                for variant, seed in jobs:
                    mine = {k: r for k, r in stored.items() if r.get("variant") == variant and r.get("seed", 0) == seed}
                    futures[pool.submit(_work, self.spec, str(self.store.path), self.run_id, self.device_name,
                                        self.memory_limit, variant, seed, mine, messages)] = (variant, seed)
                pending = set(futures)
                while pending:
                    self._drain(messages, bar, timeout=0.5)
                    for future in [f for f in pending if f.done()]:
                        pending.discard(future)
                        self._drain(messages, bar, timeout=0.0)  # its last rows were queued before it returned
                        self._finish(futures[future], future, bar)
            self._drain(messages, bar, timeout=0.0)
        bar.close()

    def _drain(self, messages, bar, timeout: float) -> None:
        while True:
            try:
                kind, payload = messages.get(timeout=timeout) if timeout else messages.get_nowait()
            except queue_module.Empty:
                return
            timeout = 0.0
            if kind == "row":
                self.store.append(payload)
            elif kind == "step":
                bar.update(payload)

    def _finish(self, job: tuple[str, int], future: Future, bar) -> None:
        """After a job: a one-line summary, or rows with the reason for every config it did not store."""
        variant, seed = job
        exc = future.exception()
        if exc is not None:
            status, reason = classify_failure(exc)
            self._job(variant, seed, self._stored()).status_rows(status, f"worker failed: {reason}")
            bar.write(f"{variant} seed {seed}: {status}: {reason}", file=sys.stderr)
            return
        info_path = job_dir(self.store.path, variant, seed) / TRAIN_INFO
        if info_path.exists():
            info = json.loads(info_path.read_text())
            bar.write(f"{variant} seed {seed}: trained {info['steps']} steps in {info['train_wall_s']:.0f} s, "
                      f"validation {info['val_bits_per_byte']:.3f} bits/byte", file=sys.stderr)


def tasks(spec: ExtrapSpec, shard: tuple[int, int] | None = None) -> list[tuple[str, int]]:
    """(variant, seed) of every training of ``spec`` in ``shard`` (``bench.sweep.planner.take_shard``, the
    sweep's rule; a training with its evaluations is the extrapolation's unit of work): variants in preset
    order, seeds inner."""
    return take_shard([(v, s) for v in spec.variants for s in spec.seeds], shard)


def _finished(spec: ExtrapSpec, job: tuple[str, int], stored: dict[str, dict]) -> bool:
    variant, seed = job
    return all(row_key(variant, spec.train.train_len, n, p, seed) in stored
               for p in spec.eval.protocols for n in spec.eval.lengths)


# ---- the worker process ---------------------------------------------------------------------------------

_CORPORA: dict[tuple[str, int], object] = {}


def _work(spec: ExtrapSpec, run_dir: str, run_id: str, device_name: str | None, memory_limit: int,
          variant: str, seed: int, stored: dict[str, dict], messages) -> None:
    """One job in a worker process: rows and progress go to ``messages`` as ("row", row) and ("step", 1)."""
    key = (spec.corpus, spec.split_seed)
    if key not in _CORPORA:
        _CORPORA[key] = load_corpus(spec.corpus, seed=spec.split_seed)
    job = TrainingJob(spec, variant, seed, run_dir=Path(run_dir), run_id=run_id, device=torch.device("cpu"),
                      device_name=device_name, memory_limit=memory_limit, corpus=_CORPORA[key], stored=stored,
                      sink=lambda row: messages.put(("row", row)), progress=False,
                      on_step=lambda step, loss: messages.put(("step", 1)))
    with process_settings(threads=spec.threads):  # each job under the preset's threads, as in the parent
        job.run()
