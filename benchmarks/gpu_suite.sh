#!/usr/bin/env bash
# One prepared GPU run for a lent machine (see benchmarks/gpu_suite.py): full-size DiT steps against stock
# diffusers, the trajectory stage's peak memory per memory mode next to `plan`'s estimate, the whole two-stage
# pipeline at 4 steps per stage, and the 49-frame render; figures appended to benchmarks/RESULTS.md.
#   bash benchmarks/gpu_suite.sh            # on the GPU machine, under 8 minutes
#   bash benchmarks/gpu_suite.sh --dry-run  # the same code paths at tiny size on a CPU, in seconds
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch, diffusers, safetensors, einops, kornia" 2>/dev/null; then
  echo "gpu_suite: the Python packages are missing here; install them first:" >&2
  echo "  pip install -r requirements.txt   (with the CUDA torch the machine has)" >&2
  exit 1
fi
exec python benchmarks/gpu_suite.py "$@"
