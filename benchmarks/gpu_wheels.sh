#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels that benchmarks/gpu_check.py needs on a GPU machine that has torch,
# transformers, accelerate and peft but no internet and no trl: trl, datasets and the datasets dependencies that
# those four do not bring, and pytest for the `gpu` tests. Prints the total size, which must stay under the 64 MiB
# that travels with the working tree.
#
#   bash benchmarks/gpu_wheels.sh                  # then see benchmarks/gpu_check.py's docstring for the device command
#   WITH_PACKAGE=1 bash benchmarks/gpu_wheels.sh   # also this package built as a wheel (3 MiB: over the limit)
#
# pyarrow is the smallest release datasets 5.2.0 accepts (24.0.0: 47 MiB; 26.0.1 is 53 MiB, which does not fit).
# This package itself is imported from the working tree, which travels to the machine anyway (gpu_check.py and the
# tests put the repository root on sys.path), so its wheel is left out by default: with it the set is 65 MiB.
# Wheels are for CPython 3.12 on manylinux x86_64 (PYTHON_VERSION overrides the version).
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.whl
PY=${PY:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
LIMIT=$((64 * 1024 * 1024))
rm -rf "$DEST"
mkdir -p "$DEST"

BINARY=(pyarrow==24.0.0 pandas==3.1.1 xxhash==4.1.0)
PURE=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 python-dateutil==4.0.0
      pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0)

for spec in "${BINARY[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "$spec"
done
for spec in "${PURE[@]}"; do  # --python-version: multiprocess ships one wheel per Python version
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" -d "$DEST" "$spec"
done
if [[ "${WITH_PACKAGE:-0}" == 1 ]]; then
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" .
fi

ls -l "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $total bytes ($(( total / 1024 / 1024 )) MiB) in $(ls "$DEST"/*.whl | wc -l) wheels (limit $LIMIT)"
if (( total > LIMIT )); then
  echo "too large: more than 64 MiB cannot travel with the working tree" >&2
  exit 1
fi
