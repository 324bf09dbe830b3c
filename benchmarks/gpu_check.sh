#!/usr/bin/env bash
# Every figure the issues ask of a GPU (H100/H200), in one run of well under 10 minutes.
# Needs only what the lent machine has (torch, transformers) plus two tokenizers' files, which
# benchmarks/prepare_gpu_assets.sh copies into .bench_assets/ (ignored by git, carried to the machine).
#   device run: bash benchmarks/gpu_check.sh      (carry: .bench_assets)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 360 python3 benchmarks/gpu_attack.py --tokenizer .bench_assets/smollm2-tokenizer
timeout 150 python3 benchmarks/gpu_score.py --tokenizer .bench_assets/minilm-tokenizer
