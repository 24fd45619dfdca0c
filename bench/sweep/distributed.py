"""A sweep across processes under torchrun: ``torchrun --nproc-per-node K -m bench run ...``.

Every rank plans the same sweep. Configs run level by level in N (the plan's interleaved order): at each N the
configs still pending are dealt round-robin to the ranks (``bench.sweep.planner.take_shard``, the rule of
``--shard``), each rank runs its share on its own device
(``cuda:LOCAL_RANK``; on a CPU, its share of the cores), and the rows travel to every rank over
torch.distributed (gloo: rows are small Python objects, and gloo needs no GPU and no shared filesystem). Rank 0
alone writes the store, and after the last N the frame and the report; the other ranks keep their rows in
memory. Every rank sees every row, so the planner predicts a config from the smaller N measured on any rank.
A config whose run raised on its rank outside the executor is an ``error`` row naming the rank; a rank that
dies takes the job down (torchrun), and the same ``--run-id`` resumes from rank 0's store.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from bench.process import process_settings
from bench.sweep.executor import describe
from bench.sweep.planner import take_shard
from bench.sweep.presets import SweepSpec
from bench.sweep.session import Sweep, new_run_id
from bench.sweep.store import MemoryStore


def world_size() -> int:
    """Processes of this job: torchrun's WORLD_SIZE, 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _place(spec: SweepSpec, local_rank: int, local_world: int) -> tuple[int | None, str | None]:
    """Put this rank on its device: ``cuda:LOCAL_RANK``, or on a CPU its share of the cores. Returns (torch
    threads for this rank, None on a GPU; the warning for ranks sharing a CPU, else None)."""
    if spec.device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; run at most "
                             f"that many processes per node")
        torch.cuda.set_device(local_rank)
        return None, None
    threads = max(1, (os.cpu_count() or 1) // local_world)
    if local_world == 1:  # the machine's one rank: nothing disturbs it
        return threads, None
    return threads, (f"{local_world} ranks share this machine's CPU ({os.cpu_count()} cores, {threads} threads "
                     "each): their calls run at the same time and disturb each other's timings (memory bandwidth, "
                     "caches, turbo); for comparable CPU times run one process")


def run_ranks(spec: SweepSpec, *, results_dir: str | Path, run_id: str | None, profile: bool = False,
              log=print) -> Sweep | None:
    """Run ``spec`` as one rank of a torchrun job; returns rank 0's session (its store holds every row), None
    on the other ranks. ``log(text)`` prints progress lines on rank 0."""
    dist.init_process_group("gloo")
    try:
        rank, size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        threads, warning = _place(spec, local_rank, local_world)
        if warning and rank == 0:
            warnings.warn(warning, stacklevel=2)
        with process_settings(threads=threads):
            return _run_rank(spec, rank, size, results_dir=results_dir, run_id=run_id, profile=profile, log=log)
    finally:
        dist.destroy_process_group()


def _run_rank(spec: SweepSpec, rank: int, size: int, *, results_dir: str | Path, run_id: str | None,
              profile: bool, log) -> Sweep | None:
    """``run_ranks``' work on rank ``rank`` of ``size``, once the process group is up and the rank placed."""
    ids = [run_id or new_run_id()]
    dist.broadcast_object_list(ids, src=0)  # one run id: rank 0's
    store = None if rank == 0 else MemoryStore(ids[0])
    sweep = Sweep(spec, results_dir=results_dir, run_id=ids[0], profile=profile, store=store)
    # rank 0's stored rows (a resumed run) and every rank's environment
    shared = [sweep.rows if rank == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    if rank:
        sweep.add_rows(shared[0])
    environments: list = [None] * size
    dist.all_gather_object(environments, {**sweep.environment, "rank": rank, "world_size": size})
    if rank == 0:
        for env in environments[1:]:
            sweep.store.add_environment(env)
        log(f"run {sweep.run_id}: preset {spec.name} on {size} ranks, {len(sweep.planned)} configs, "
            f"{len(sweep.planned) - len(sweep.pending())} already done")
    with sweep:
        for n in sorted({p.config.n for p in sweep.planned}):
            level = [p for p in sweep.pending() if p.config.n == n]
            mine = []
            for planned in take_shard(level, (rank + 1, size)):
                try:
                    mine.append(sweep.run_one(planned))
                except Exception as exc:  # the rank failed outside the executor: a row with the reason
                    mine.append(sweep.failed_row(planned, f"rank {rank} failed: {describe(exc)}"))
            gathered: list = [None] * size
            dist.all_gather_object(gathered, mine)
            sweep.add_rows([row for rows in gathered for row in rows])
            if rank == 0:
                errors = [r for rows in gathered for r in rows if r["status"] == "error"]
                for row in errors:
                    print(f"error in {row['key']}: {row['reason']}", file=sys.stderr)
                log(f"N={n}: {len(level)} configs on {size} ranks")
    dist.barrier()
    return sweep if rank == 0 else None
