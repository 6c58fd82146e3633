#!/usr/bin/env bash
# genlab's pure-Python dependencies in one folder, for a GPU machine that has torch, torchvision,
# Lightning and torchmetrics but neither the rest nor a network (a borrowed or air-gapped box):
#   bash experiments/benchmarks/device_kit.sh [DIR]   # here, from the package index; default .devkit
#   bash experiments/benchmarks/gpu.sh                # there: it puts src/ and .devkit/ on the path
# Every package is pure Python (checked: no compiled module) at the version this venv runs, so the
# folder works with any Python 3.10+ there; --no-deps: torch's and Lightning's own needs are
# there already. ~14 MB.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kit="$(realpath -m "${1:-$here/../../.devkit}")"
python="${PYTHON:-python}"
# what gpu.sh imports beyond the machine's own packages: the configs (hydra, omegaconf, antlr4),
# Lightning's trainer package, genlab's console (rich), torch-fidelity's InceptionV3
packages=(hydra-core omegaconf antlr4-python3-runtime pytorch-lightning lightning-utilities
          rich markdown-it-py mdurl pygments torch-fidelity)
pins=()
for p in "${packages[@]}"; do
    v="$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")" || {
        echo "device_kit.sh: $p is not installed in $python's environment (pip install -e .)" >&2
        exit 2
    }
    pins+=("$p==$v")
done
tmp="$(mktemp -d "${kit%/}.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip install --quiet --no-deps --no-compile --target "$tmp/kit" "${pins[@]}"
if compiled="$(find "$tmp/kit" -name "*.so" -print -quit)" && [ -n "$compiled" ]; then
    echo "device_kit.sh: $compiled is compiled: it would tie the kit to this machine's Python" >&2
    exit 2
fi
rm -rf "$tmp/kit/bin" "$tmp/kit/tests"  # scripts for this venv; a package's stray tests/
rm -rf "$kit" && mv "$tmp/kit" "$kit"
echo "device_kit.sh: ${#pins[@]} packages in $kit ($(du -sh "$kit" | cut -f1)): ${pins[*]}"
