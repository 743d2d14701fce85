#!/usr/bin/env bash
# Dress rehearsal of the offline GPU check on a CPU box: a fresh venv holding what the borrowed
# GPU machine has (scripts/gpu_machine.txt: the versions known there, pinned), a bundle built
# for this Python, then scripts/gpu_check.sh with no index, running its CPU-safe part.
# If this passes, the first GPU call will not die on a missing wheel.
#
#   scripts/gpu_rehearsal.sh [OUTDIR]      (default /tmp/loratop-rehearsal/out)
#
# Needs the package index (to build the venv and the bundle), and a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=/tmp/loratop-rehearsal
out="${1:-$root/out}"
py=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

rm -rf "$root/venv" "$root/bundle" "$root/work"
mkdir -p "$root"
python3 -m venv "$root/venv"
pip="$root/venv/bin/python -m pip"
$pip install --quiet --upgrade pip
echo "== the machine's packages (as scripts/gpu_machine.txt has them; CPU torch here)"
$pip install --quiet torch==2.13.0
# The pins the machine showed, and the unpinned names loratop's requirements reach. Not
# bitsandbytes, trl, datasets, dill, multiprocess, pydantic, textual, cupti-python: the
# bundle must bring those.
$pip install --quiet \
    transformers==5.17.0 accelerate==1.15.0 tokenizers==0.23.2 huggingface-hub==1.33.0 safetensors==0.8.0 \
    peft nvidia-ml-py psutil pyyaml rich pytest pyarrow pandas xxhash requests tqdm jinja2 aiohttp httpx \
    filelock fsspec markdown-it-py pygments packaging regex typing-extensions \
    'nvidia-cuda-cupti~=13.0.0' 'cuda-bindings~=13.0.0' cuda-pathfinder
$pip list --format=freeze | tr '\n' ' '
echo
echo "== bundle for Python $py"
scripts/gpu_bundle.sh --python "$py" --dest "$root/bundle"
echo "== scripts/gpu_check.sh, offline"
PYTHON="$root/venv/bin/python" LORATOP_GPU_BUNDLE="$root/bundle" LORATOP_GPU_WORK="$root/work" \
    scripts/gpu_check.sh "$out" --oom-at 35
