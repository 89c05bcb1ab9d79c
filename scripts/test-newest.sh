#!/usr/bin/env bash
# The decode, sink, segment and stream tests (and the GPU tests, where there is a GPU) under the
# newest releases of PyAV and diffusers, on the Python that runs this (PyAV 19 needs 3.12+).
# torch and the small dependencies come from that Python's own environment. WHEELS=DIR installs
# the wheels in DIR (no index, as on a machine without a network) instead of the newest from PyPI.
# Extra arguments go to pytest, e.g. FAIL_WITHOUT_CUDA=1 scripts/test-newest.sh -x.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
else
  "$PYTHON" -m pip install -q --upgrade --target "$site" av diffusers
fi
export PYTHONPATH="$site:$PWD/src"
"$PYTHON" -c 'import sys, torch, av, diffusers, numpy
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, PyAV {av.__version__}, "
      f"diffusers {diffusers.__version__}, numpy {numpy.__version__}, cuda {torch.cuda.is_available()}")'
# The data side's tests need boto3 and a local S3 server and touch neither PyAV nor diffusers.
"$PYTHON" -m pytest -p no:cacheprovider -q --ignore=tests/test_data.py "$@" tests
