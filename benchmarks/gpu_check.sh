#!/usr/bin/env bash
# The one GPU check: observer, chat and export figures side by side in one run (see gpu_check.py).
# On a GPU machine: `bash benchmarks/gpu_check.sh` (< 5 minutes). Anywhere: `bash benchmarks/gpu_check.sh --tiny`.
# Needs only torch, transformers, safetensors, huggingface_hub, numpy — what the GPU machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python benchmarks/gpu_check.py "$@"
