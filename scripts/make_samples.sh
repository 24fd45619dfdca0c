#!/usr/bin/env bash
# Regenerate the sample reports in reports/samples/ from fresh real runs on this machine:
#   quick.html     the CPU quick preset (1k..16k)
#   cpu-long.html  the cpu-long preset (256..64k; the linear variants reach 64k)
#   full.html      the full preset, only when a GPU is visible (torch.cuda.is_available())
# Usage: scripts/make_samples.sh [PYTHON]   (default: python). Runs take ~1 + ~5 minutes on 2 CPU cores.
#   speed-quality.html  a finished speed run and a finished extrapolation run in one report (so that the
#   speed-against-quality figure shows), rendered without running anything:
#   scripts/make_samples.sh PYTHON SPEED_RUN_DIR EXTRAPOLATION_RUN_DIR   (renders only this sample)
# SAMPLE_RESULTS=DIR keeps the runs in DIR (else a temporary directory, removed at the end); a second call
# with the same DIR renders the finished runs again without running them (and resumes a killed one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${SAMPLE_RESULTS:-}" ]; then
  RESULTS=$SAMPLE_RESULTS
  mkdir -p "$RESULTS"
else
  RESULTS=$(mktemp -d)
  trap 'rm -rf "$RESULTS"' EXIT
fi
SAMPLES=reports/samples
mkdir -p "$SAMPLES"
MAX_BYTES=$((2 * 1024 * 1024))

sample() {  # sample NAME PRESET: run the preset, render its report into reports/samples/NAME.html
  local name=$1 preset=$2
  # A finished run (results.csv written) is only rendered again; a killed one resumes. bench run exits 1 when
  # a config ended in error; the report shows those rows, so keep going.
  if [ ! -f "$RESULTS/$name/results.csv" ]; then
    "$PYTHON" -m bench run --preset "$preset" --results-dir "$RESULTS" --run-id "$name" --no-progress || true
  fi
  "$PYTHON" -m reports render "$RESULTS/$name" -o "$SAMPLES/$name.html" \
    --title "Sample report: preset $preset ($(date -u +%Y-%m-%d))"
  local size
  size=$(stat -c %s "$SAMPLES/$name.html")
  if [ "$size" -gt "$MAX_BYTES" ]; then
    echo "warning: $SAMPLES/$name.html is $size bytes, over the 2 MiB a sample should stay under" >&2
  fi
}

if [ $# -ge 3 ]; then
  for run in "$2" "$3"; do
    [ -f "$run/rows.jsonl" ] || { echo "error: $run is not a run directory (no rows.jsonl in it)" >&2; exit 2; }
  done
  "$PYTHON" -m reports render "$2" "$3" -o "$SAMPLES/speed-quality.html" \
    --title "Sample report: speed and extrapolation runs ($(basename "$2"), $(basename "$3"); $(date -u +%Y-%m-%d))"
  ls -l "$SAMPLES/speed-quality.html"
  exit 0
elif [ $# -eq 2 ]; then
  echo "error: give both a speed run and an extrapolation run (got only $2)" >&2
  exit 2
fi

sample quick quick
sample cpu-long cpu-long
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  sample full full
fi
ls -l "$SAMPLES"
