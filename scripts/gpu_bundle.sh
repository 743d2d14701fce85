#!/usr/bin/env bash
# Download the wheels an offline GPU machine lacks (the pins in scripts/gpu_bundle.txt), for
# that machine's Python and platform, into a git-ignored folder that travels with the repo.
#
#   scripts/gpu_bundle.sh [--python 3.12] [--dest .gpu-bundle]
#
#   --python X.Y   the target machine's Python (default 3.12, the borrowed H200's); give this
#                  machine's own version to build a bundle for a rehearsal here
#                  (scripts/gpu_rehearsal.sh does)
#   --dest DIR     where the wheels go (default .gpu-bundle/ in the repo root, git-ignored)
#
# Then, on the GPU machine: scripts/gpu_check.sh OUTDIR (it installs from the bundle offline).
# Needs network here (the package index), none there.
set -euo pipefail
cd "$(dirname "$0")/.."

python_version=3.12
dest=.gpu-bundle
limit_mib=64  # what travels to the borrowed machine, the working tree included
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python_version="${2:?--python needs a version like 3.12}"; shift 2 ;;
        --dest) dest="${2:?--dest needs a folder}"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "gpu_bundle.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$python_version" =~ ^3\.[0-9]+$ ]]; then
    echo "gpu_bundle.sh: --python '$python_version': expected a version like 3.12" >&2
    exit 2
fi

pins=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' scripts/gpu_bundle.txt | grep -v '^$')
mkdir -p "$dest"

# One version of each package: drop wheels left from an older pin list.
for wheel in "$dest"/*.whl; do
    [ -e "$wheel" ] || continue
    base=$(basename "$wheel")
    keep=no
    while IFS= read -r pin; do
        name=${pin%%==*}; version=${pin##*==}
        prefix="$(echo "$name" | tr '[:upper:]-' '[:lower:]_')-${version}-"
        if [[ "$(echo "$base" | tr '[:upper:]' '[:lower:]')" == "$prefix"* ]]; then keep=yes; break; fi
    done <<< "$pins"
    if [ $keep = no ]; then echo "removing $base (not pinned in scripts/gpu_bundle.txt)"; rm -f "$wheel"; fi
done

count=$(echo "$pins" | wc -l)
echo "downloading $count wheels for CPython $python_version on x86_64 Linux into $dest/ ..."
# --no-deps: every requirement is pinned on its own line (tests/test_gpu_bundle.py checks the
# list is complete). The platform tags are the manylinux ones the machine's glibc accepts.
echo "$pins" | python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform linux_x86_64 -d "$dest" -r /dev/stdin

have=$(find "$dest" -maxdepth 1 -name '*.whl' | wc -l)
bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "bundle: $have wheels, $mib MiB in $dest/"
if [ "$have" -ne "$count" ]; then
    echo "gpu_bundle.sh: expected $count wheels, found $have in $dest/" >&2
    exit 1
fi
if [ "$mib" -ge "$limit_mib" ]; then
    echo "gpu_bundle.sh: $mib MiB is over the ${limit_mib} MiB that may travel with the repo" >&2
    exit 1
fi
echo "next: carry $dest to the GPU machine and run scripts/gpu_check.sh OUTDIR there"
