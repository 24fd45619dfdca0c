"""Ahead-of-time compile check of the fused kernels for sm_90 (H100) and sm_80 (A100), without a GPU.

Runs ``python -m lrpe.kernels.compile_check`` in a subprocess with TRITON_INTERPRET unset (kernels defined
under the interpreter cannot be compiled, and the interpreter tests set it for their own process). Each
configuration the kernels launch (pass 1 and the four pass-2 kernels x LRPE kind x D in {64, 128} x causal x
feature map) is compiled to PTX and a cubin; the check fails on shared memory over the per-block limit, on
any register spill (``ptxas -v``), and on sm_90 PTX without ``wgmma`` for half inputs. This test compiles
the bfloat16 configurations (the dtype the GPU sweeps run); ``python -m lrpe.kernels.compile_check`` alone
compiles float16 and float32 as well. It needs ptxas, which the triton wheel ships.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


@pytest.mark.slow
def test_every_shipped_configuration_compiles_without_spills(tmp_path):
    from lrpe.kernels.dispatch import triton_reason

    assert triton_reason() is None
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its current default
    out = tmp_path / "resources.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "lrpe.kernels.compile_check", "--dtypes", "bf16",
                           "--arch", "90,80", "--json", str(out)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=1500)
    print(proc.stdout)  # the resource table, shown with -s or on failure
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    # Pass 2: 4 kernels (fwd, dv, dq, dk) x 4 kinds x 2 head dims x 2 causal modes; pass 1 ("state", no
    # causal mode): 4 kinds x 2 head dims; each for 2 feature maps (1 + elu, identity) and 2 architectures.
    assert len(rows) == (4 * 4 * 2 * 2 + 4 * 2) * 2 * 2
    assert {row["kernel"] for row in rows} == {"state", "fwd", "bwd_dv", "bwd_dq", "bwd_dk"}
    assert {row["feature"] for row in rows} == {"elu1", "identity"}
    assert all(row["wgmma"] for row in rows if row["arch"] == "sm_90a")
    assert all(row["mma"] for row in rows if row["arch"] == "sm_80")
    assert not any(row["failures"] for row in rows)


_FLOAT32_PROBE = """
import json
from lrpe.kernels.compile_check import Config, compile_config

rows = [compile_config(Config(kernel, "none", 64, causal, dtype, "elu1"), cap)
        for kernel, causal in (("state", None), ("fwd", True)) for dtype in ("fp32", "bf16") for cap in (90, 80)]
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_float32_dots_run_on_tensor_cores():
    # float32 operands take the 3xTF32 dots: TF32 tensor-core instructions (wgmma on sm_90a, mma.sync on sm_80),
    # not the FMA loops of IEEE dots. Pass 1 at D = 64 (no feature tile beside the state) fits without spills;
    # the causal forward spills (today), which is why GPU_DTYPES leaves float32 out. bfloat16 alongside: no TF32.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _FLOAT32_PROBE], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {(r["kernel"], r["dtype"], r["arch"]): r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    for kernel in ("state", "fwd"):
        for arch, instruction in (("sm_90a", "wgmma"), ("sm_80", "mma")):
            assert rows[kernel, "fp32", arch]["tf32"] and rows[kernel, "fp32", arch][instruction]
            assert not rows[kernel, "bf16", arch]["tf32"]
        assert not rows["state", "fp32", "sm_90a"]["failures"] and not rows["state", "fp32", "sm_80"]["failures"]
    from lrpe.kernels.function import GPU_DTYPES

    # A spilling float32 forward must not be shipped for GPUs.
    if any(r["spill_stores"] for r in rows.values() if r["kernel"] == "fwd" and r["dtype"] == "fp32"):
        assert "torch.float32" not in {str(d) for d in GPU_DTYPES}
