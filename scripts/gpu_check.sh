#!/usr/bin/env bash
# The GPU check as one offline call: install loratop from the wheel bundle with no network,
# run scripts/gpu_check.py and `pytest -m gpu`, and write everything printed to OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR [--speed | --speed-only] [gpu_check.py arguments...]
#
# --speed also runs scripts/gpu_speed.py (issue 25's speed knobs against today's settings, ~7 minutes
# on an H200) after the GPU tests; --speed-only installs and runs only that, to fit one 10-minute call.
#
# Environment:
#   LORATOP_GPU_BUNDLE  the wheels from scripts/gpu_bundle.sh (default .gpu-bundle/)
#   LORATOP_GPU_WORK    where the model and the runs go (default: a new temp folder)
#   PYTHON              the interpreter to install into and run (default python3)
#   LORATOP_GPU_SPEED_ARGS  arguments for gpu_speed.py (e.g. "--workloads gpu_check")
#
# OUTDIR gets at most 8 files (what the borrowed machine sends back): gpu_check.log (all of
# it, the in-process trainer's output too), pytest-gpu.log, and the memory-truth run's
# events.jsonl and status.json; with --speed or --speed-only, gpu_speed.log too.
# The exit code is 0 only if the install, every GPU check and the GPU tests passed (and, when asked,
# every gpu_speed.py run ended cleanly: a missed speed goal is a finding, not a failure).
# What each line must show: docs/gpu-check.md.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)

out="${1:?usage: scripts/gpu_check.sh OUTDIR [--speed | --speed-only] [gpu_check.py arguments...]}"
shift
speed=no
check_args=()
for arg in "$@"; do
    case "$arg" in
        --speed) speed=yes ;;
        --speed-only) speed=only ;;
        *) check_args+=("$arg") ;;
    esac
done
set -- ${check_args[@]+"${check_args[@]}"}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
bundle="${LORATOP_GPU_BUNDLE:-$repo/.gpu-bundle}"
work="${LORATOP_GPU_WORK:-$(mktemp -d /tmp/loratop-gpu-check.XXXXXX)}"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

exec > >(tee "$out/gpu_check.log") 2>&1
status=0
fail() { echo "FAILED: $*"; status=1; }

echo "== environment ($(date -u +%FT%TZ))"
echo "repo $repo at $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'); bundle $bundle; work $work"
"$python" - <<'EOF'
import importlib.metadata as md, platform, sys
print(f"python {platform.python_version()} at {sys.executable}")
names = ["torch", "transformers", "peft", "accelerate", "tokenizers", "huggingface-hub", "safetensors", "numpy",
         "pyarrow", "fsspec", "nvidia-ml-py", "cuda-bindings", "nvidia-cuda-cupti", "psutil", "pyyaml", "rich", "pytest"]
found = []
for name in names:
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name} (missing)")
print("have: " + ", ".join(found))
EOF
gpu=no
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    gpu=yes
    nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version --format=csv,noheader
else
    echo "nvidia-smi: not found (no NVIDIA driver here: the CPU-safe part only)"
fi

echo
echo "== bundle"
missing=0
while IFS= read -r pin; do
    name=${pin%%==*}; version=${pin##*==}
    prefix="$(echo "$name" | tr '[:upper:]-' '[:lower:]_')-${version}-"
    if ! find "$bundle" -maxdepth 1 -name "*.whl" -printf "%f\n" 2>/dev/null | tr '[:upper:]' '[:lower:]' | grep -q "^${prefix}.*\.whl$"; then
        echo "missing from the bundle: $pin"
        missing=$((missing + 1))
    fi
done < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' scripts/gpu_bundle.txt | grep -v '^$')
echo "$(find "$bundle" -maxdepth 1 -name "*.whl" 2>/dev/null | wc -l) wheels in $bundle, $missing pins missing"
[ "$missing" -eq 0 ] || fail "the bundle lacks $missing wheels: run scripts/gpu_bundle.sh --python X.Y (X.Y above) where pip has network"

echo
echo "== install, offline"
# No index, no config files, no PIP_* variables: only the bundle and what is installed.
# This box's pip config may name local wheel folders that would hide a gap in the bundle.
for var in $(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/\1/p'); do unset "$var"; done
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if "$python" -m pip install --quiet --no-index --find-links "$bundle" -e "${repo}[gpu]"; then
    echo "installed loratop[gpu] and what it lacked, resolving every requirement against the bundle"
else
    # Keep the GPU time: install the wheels as they are and let the checks show what breaks.
    fail "pip could not resolve loratop[gpu] from the bundle and what is installed (above)"
    echo "falling back: the bundle's wheels without dependency resolution, loratop from the source tree"
    "$python" -m pip install --quiet --no-index --no-deps "$bundle"/*.whl || fail "the no-deps install failed too"
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "pip check:"
"$python" -m pip check || echo "(pip check lists conflicts above: versions the machine has that a package does not accept)"
"$python" - <<'EOF' || fail "an import failed"
import importlib, importlib.metadata as md
for module, dist in [("bitsandbytes", "bitsandbytes"), ("trl", "trl"), ("datasets", "datasets"), ("peft", "peft"),
                     ("transformers", "transformers"), ("pydantic", "pydantic"), ("textual", "textual"),
                     ("textual_plot", "textual-plot"), ("pynvml", "nvidia-ml-py"), ("loratop.cli.main", "loratop")]:
    importlib.import_module(module)
    print(f"import {module}: ok ({dist} {md.version(dist)})")
try:
    import cupti  # noqa: F401
    print(f"import cupti: ok (cupti-python {md.version('cupti-python')})")
except Exception as exc:  # a CPU box has no libcupti: say so; the GPU check says what it means
    print(f"import cupti: {type(exc).__name__}: {exc}")
EOF

if [ $speed = only ]; then
    echo
    echo "== --speed-only: scripts/gpu_check.py, check_gpu_devices.py and pytest -m gpu are skipped"
else
    echo
    echo "== scripts/gpu_check.py $*"
    "$python" -u scripts/gpu_check.py --out "$work" "$@" || fail "scripts/gpu_check.py exited non-zero"
    for name in events.jsonl status.json; do
        [ -f "$work/run/$name" ] && cp "$work/run/$name" "$out/$name"
    done

    echo
    echo "== scripts/check_gpu_devices.py (NVML adapter vs torch, per CUDA_VISIBLE_DEVICES)"
    "$python" -u scripts/check_gpu_devices.py || fail "scripts/check_gpu_devices.py exited non-zero"

    echo
    echo "== pytest -m gpu"
    "$python" -m pytest -m gpu -rA -p no:cacheprovider tests 2>&1 | tee "$out/pytest-gpu.log"
    code=${PIPESTATUS[0]}
    [ "$code" -eq 0 ] || fail "pytest -m gpu exited $code"
    # On one GPU the two-GPU tests skip, saying so; any other skip on a GPU machine is a failure.
    if [ $gpu = yes ] && grep "SKIPPED" "$out/pytest-gpu.log" | grep -qv "needs two CUDA GPUs"; then
        fail "a GPU test skipped on a machine with a GPU (see the SKIPPED lines)"
    fi
fi

if [ $speed != no ]; then
    echo
    echo "== scripts/gpu_speed.py ${LORATOP_GPU_SPEED_ARGS:-}"
    # shellcheck disable=SC2086  # word-split on purpose: several arguments in one variable
    "$python" -u scripts/gpu_speed.py --out "$work/speed" ${LORATOP_GPU_SPEED_ARGS:-} 2>&1 | tee "$out/gpu_speed.log"
    code=${PIPESTATUS[0]}
    [ "$code" -eq 0 ] || fail "scripts/gpu_speed.py exited $code (a run failed)"
fi

echo
if [ $status -eq 0 ] && [ $gpu = no ]; then
    echo "gpu_check.sh: all passed (the CPU-safe part only: no NVIDIA GPU here)"
elif [ $status -eq 0 ]; then
    echo "gpu_check.sh: all passed"
else
    echo "gpu_check.sh: something FAILED (see above)"
fi
echo "output in $out: $(ls "$out" | tr '\n' ' ')"
exit $status
