"""Ahead-of-time compile check of every shipped kernel configuration for sm_90 (H100) and sm_80 (A100).

Needs no GPU: ``triton.compile`` on an ``ASTSource`` for a ``GPUTarget`` gives the PTX, the shared memory
(compiled metadata) and a cubin through ptxas; ``ptxas -v`` on the PTX then reports registers and spills.
Run ``python -m lrpe.kernels.compile_check [--arch 90,80] [--json out.json]`` with TRITON_INTERPRET unset
(interpreted kernels cannot be compiled); it prints the resource table and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

# Kernels defined under the interpreter are not compilable; this module is meant to run in its own process.
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise RuntimeError("compile_check needs TRITON_INTERPRET unset (got TRITON_INTERPRET=1)")

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.compiler import compile as triton_compile

from lrpe.kernels.dispatch import float32_reason
from lrpe.kernels.function import FEATURE_CODES, LaunchConfig, launch_config
from lrpe.kernels.linear_attn_bwd import lrpe_linear_bwd_qk
from lrpe.kernels.linear_attn_fwd import lrpe_linear_fwd
from lrpe.kernels.linear_attn_state import lrpe_linear_state
from lrpe.kernels.tables import KIND_CODES

KERNELS = {"state": lrpe_linear_state, "fwd": lrpe_linear_fwd, "bwd_dv": lrpe_linear_fwd,
           "bwd_dq": lrpe_linear_bwd_qk, "bwd_dk": lrpe_linear_bwd_qk}
# Pass 1 has no causal variant (a segment's local sum); its one configuration per (kind, D, dtype) has causal None.
UNMASKED = ("state",)
# Shared memory per block that a kernel may use (opt-in maximum), bytes.
SMEM_LIMIT = {90: 232448, 80: 166912}
DTYPE_SIG = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
CHUNK = 64


@dataclass(frozen=True)
class Config:
    kernel: str
    kind: str
    head_dim: int
    causal: bool | None
    dtype: str
    feature: str


def shipped_configs(dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32"),
                    features: tuple[str, ...] = tuple(FEATURE_CODES)) -> list[Config]:
    """Every configuration the kernels launch on a GPU with D = DV in {64, 128} (float32: only the kinds and
    head dims ``float32_reason`` admits, at its own chunk): pass 1 ("state") once, the pass-2 kernels causal
    and full, each for every feature map (1 + elu, identity)."""
    return [Config(kernel, kind, d, None if kernel in UNMASKED else causal, dtype, feature)
            for feature, kernel, kind, d, causal, dtype in itertools.product(features, KERNELS, KIND_CODES,
                                                                             (64, 128), (True, False), dtypes)
            if (kernel not in UNMASKED or causal) and (dtype != "fp32" or not float32_reason(kind, d, d))]


def _source(cfg: Config, capability: int) -> tuple[ASTSource, LaunchConfig]:
    fn = KERNELS[cfg.kernel]
    d = dv = cfg.head_dim
    kind = KIND_CODES[cfg.kind]
    launch = launch_config(kind, d, dv, capability, FEATURE_CODES[cfg.feature], cfg.dtype == "fp32")
    width = d // 2 if cfg.kind == "orthogonal" else d
    tensor = DTYPE_SIG[cfg.dtype]
    sig: dict[str, str] = {}
    for name in fn.arg_names:
        if name in ("COS_C", "SIN_C", "COS_F", "SIN_F", "INIT", "STATE"):
            sig[name] = "*fp32"
        elif name in ("MEMBERS", "START", "POS", "LENGTH"):
            sig[name] = "*i32"
        elif name in ("n", "offset", "H", "n_chunks", "seg_chunks", "init_bh_stride", "init_seg_stride",
                      "angle_heads", "perm_heads"):
            sig[name] = "i32"
        elif name.isupper():
            sig[name] = tensor
    # dv runs the forward kernel anti-causally, dk the q/k gradient kernel anti-causally (when causal).
    reverse = cfg.causal and cfg.kernel in ("bwd_dv", "bwd_dk")
    constexprs = {"D": d, "DV": dv, "W": width, "C": launch.chunk or CHUNK, "KIND": kind,
                  "TWO": cfg.kind in ("unitary", "orthogonal"), "FEATURE": FEATURE_CODES[cfg.feature]}
    if cfg.causal is not None:
        constexprs.update(CAUSAL=cfg.causal, REVERSE=reverse)
    if "BV" in fn.arg_names:
        constexprs["BV"] = launch.block_v
    else:
        constexprs["BW"] = launch.block_w
    for name in constexprs:
        sig[name] = "constexpr"
    # Torch allocations are 16-byte aligned: the runtime specialises pointers the same way.
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, t in sig.items() if t[0] == "*"}
    return ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs), launch


def _ptxas_path(capability: int) -> str:
    """The ptxas Triton itself runs for sm_<capability> (triton 3.9 takes a newer one from sm_90 on, matching
    the PTX version it emits); older Tritons without ``get_ptxas(arch)``: the one in the wheel, or on PATH."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(capability).path
    except (ImportError, TypeError, AttributeError):
        import triton.backends.nvidia as nvidia_backend

        bundled = os.path.join(os.path.dirname(nvidia_backend.__file__), "bin", "ptxas")
        found = bundled if os.path.isfile(bundled) else shutil.which("ptxas")
        if not found:
            raise RuntimeError(f"no ptxas: set TRITON_PTXAS_PATH or install a triton wheel with {bundled}") from None
        return found


def _ptxas_resources(ptx: str, arch: str) -> dict[str, int]:
    """Registers, spill stores/loads and stack from ``ptxas -v`` on the PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        capability = int(arch.removeprefix("sm_").rstrip("a"))
        command = [_ptxas_path(capability), "-v", f"--gpu-name={arch}", path, "-o", os.path.join(tmp, "k.cubin")]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
    log = proc.stderr + proc.stdout
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if regs is None or spill is None:
        raise RuntimeError(f"could not read ptxas -v output:\n{log}")
    return {"regs": int(regs.group(1)), "spill_stores": int(spill.group(1)), "spill_loads": int(spill.group(2)),
            "stack": int(stack.group(1)) if stack else 0}


def compile_config(cfg: Config, capability: int) -> dict:
    """Compile one configuration for sm_<capability>: a row of the resource table with a list of failures."""
    src, launch = _source(cfg, capability)
    target = GPUTarget("cuda", capability, 32)
    options = make_backend(target).parse_options({"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    compiled = triton_compile(src, target=target, options=options.__dict__)
    ptx = compiled.asm["ptx"]
    arch = "sm_90a" if capability == 90 else f"sm_{capability}"
    row = {**asdict(cfg), "arch": arch, "warps": launch.num_warps, "shared": compiled.metadata.shared,
           **_ptxas_resources(ptx, arch), "wgmma": "wgmma" in ptx, "mma": "mma.sync" in ptx,
           "tf32": ".tf32" in ptx}
    failures = []
    if row["shared"] > SMEM_LIMIT[capability]:
        failures.append(f"shared {row['shared']} B > {SMEM_LIMIT[capability]} B")
    if row["spill_stores"] or row["spill_loads"]:
        failures.append(f"spills {row['spill_stores']} B stored / {row['spill_loads']} B loaded")
    # Half dots must be wgmma on sm_90. float32 ones (3xTF32) must run on tensor cores (TF32 mma.sync or wgmma);
    # at their C = 32 or 16 chunks only the dots with 64 rows (the K~^T V state updates) can be wgmma.
    if cfg.dtype == "fp32" and not (row["tf32"] and (row["wgmma"] or row["mma"])):
        failures.append("no TF32 tensor-core instruction in the PTX")
    if capability == 90 and cfg.dtype != "fp32" and not row["wgmma"]:
        failures.append("no wgmma in the sm_90 PTX")
    row["failures"] = failures
    return row


def _compile_star(args: tuple[Config, int]) -> dict:
    return compile_config(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90,80", help="compute capabilities, comma separated")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--features", default=",".join(FEATURE_CODES), help="feature maps (elu1, identity)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    kernels = args.kernels.split(",")
    configs = shipped_configs(tuple(args.dtypes.split(",")), tuple(args.features.split(",")))
    work = [(cfg, int(cap)) for cfg in configs if cfg.kernel in kernels for cap in args.arch.split(",")]
    print(f"{'kernel':9} {'kind':12} {'D':>4} {'causal':6} {'dtype':5} {'phi':8} {'arch':7} {'warps':>5} "
          f"{'regs':>4} {'smem':>7} {'spill':>6} {'wgmma':5}  failures", flush=True)
    rows = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(_compile_star, work):
            rows.append(row)
            print(f"{row['kernel']:9} {row['kind']:12} {row['head_dim']:>4} {row['causal']!s:6} {row['dtype']:5} "
                  f"{row['feature']:8} {row['arch']:7} {row['warps']:>5} {row['regs']:>4} {row['shared']:>7} "
                  f"{row['spill_stores'] + row['spill_loads']:>6} {row['wgmma']!s:5}  {'; '.join(row['failures'])}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any(row["failures"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
