"""Ahead-of-time compile check of the fused kernels for sm_90 (H100) and sm_80 (A100), without a GPU.

Runs ``python -m lrpe.kernels.compile_check`` in a subprocess with TRITON_INTERPRET unset (kernels defined
under the interpreter cannot be compiled, and the interpreter tests set it for their own process). Each
configuration the kernels launch (pass 1 and the four pass-2 kernels x LRPE kind x D in {64, 128} x causal x
feature map) is compiled to PTX and a cubin; the check fails on shared memory over the per-block limit, on
any register spill (``ptxas -v``), on sm_90 PTX without ``wgmma`` for half inputs, and on float32 PTX without
TF32 tensor-core instructions (3xTF32 dots). This test compiles the bfloat16 configurations (the dtype the GPU
sweeps run) and the float32 ones (their own chunk and blocks); ``python -m lrpe.kernels.compile_check`` alone
compiles float16 as well. It needs ptxas, which the triton wheel ships.
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
    proc = subprocess.run([sys.executable, "-m", "lrpe.kernels.compile_check", "--dtypes", "bf16,fp32",
                           "--arch", "90,80", "--json", str(out)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=1500)
    print(proc.stdout)  # the resource table, shown with -s or on failure
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    # Pass 2: 4 kernels (fwd, dv, dq, dk) x 4 kinds x 2 head dims x 2 causal modes; pass 1 ("state", no
    # causal mode): 4 kinds x 2 head dims; each for 2 feature maps (1 + elu, identity) and 2 architectures.
    # float32: 3 kinds (none, orthogonal, permutation) at D = 64 only.
    half, single = [r for r in rows if r["dtype"] == "bf16"], [r for r in rows if r["dtype"] == "fp32"]
    assert len(half) == (4 * 4 * 2 * 2 + 4 * 2) * 2 * 2
    assert len(single) == (4 * 3 * 2 + 3) * 2 * 2
    assert {(r["kind"], r["head_dim"]) for r in single} == {("none", 64), ("orthogonal", 64), ("permutation", 64)}
    assert {row["kernel"] for row in rows} == {"state", "fwd", "bwd_dv", "bwd_dq", "bwd_dk"}
    assert {row["feature"] for row in rows} == {"elu1", "identity"}
    assert all(row["wgmma"] and not row["tf32"] for row in half if row["arch"] == "sm_90a")
    # float32 dots are 3xTF32 on tensor cores: mma.sync on sm_80, wgmma on sm_90a where a dot has 64 rows.
    assert all(row["tf32"] and (row["wgmma"] or row["mma"]) for row in single)
    assert all(row["mma"] for row in rows if row["arch"] == "sm_80")
    assert not any(row["failures"] for row in rows)

