#!/usr/bin/env bash
# genlab's GPU benchmark: one GPU, under 8 minutes, nothing needed but the checkout and the venv
# genlab is installed in. Writes experiments/benchmarks/gpu/results.md and results.json.
#   bash experiments/benchmarks/gpu.sh [--out DIR] [--work DIR]
#   bash experiments/benchmarks/gpu.sh --quick     # tiny sizes on the CPU (what the test runs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
repo="$(cd "$here/../.." && pwd)"
# a machine without genlab installed runs it from the checkout and the kit device_kit.sh built
if ! "$python" -c "import genlab" 2>/dev/null && [ -d "$repo/.devkit" ]; then
    export PYTHONPATH="$repo/src:$repo/.devkit${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" -c "import genlab" 2>/dev/null || {
    echo "gpu.sh: genlab is not importable by $python; activate its venv, set PYTHON=, or" \
        "build .devkit with device_kit.sh (no network there)" >&2
    exit 2
}
exec "$python" "$here/gpu.py" "$@"
