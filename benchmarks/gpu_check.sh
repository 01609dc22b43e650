#!/usr/bin/env bash
# Exercise etr-hub's device paths end to end on a machine with a CUDA GPU, and print the decoding
# and switch ratios there. Run it from the repository root, in the venv etr-hub is installed in:
#
#     bash benchmarks/gpu_check.sh [DEVICE]          # DEVICE: cuda (default) or cuda:N
#
# 1. the CUDA tests (tests/test_devices.py: placement, routes equal to the CPU's, seeded sampling,
#    the batched passes, the console script on cuda; they are skipped on machines without a GPU);
# then, in a throw-away ETR_HUB_HOME (removed at exit; the embedded meta model is borrowed read-only
# from $ETR_HUB_HOME or the default home when converted there, else fetched once into the temporary one):
# 2. benchmarks/bench_decode.py on DEVICE in float32 and in bfloat16: routed decoding vs
#    model.generate, and the cost of a switch to a LoRA expert (each run prints its ratios last);
# 3. the shipped experts added with their admission report computed on the GPU, then a chat and an
#    explain on DEVICE in bfloat16.
# GPU_CHECK_REPS (default 5): the benchmark's repetitions.
# Nothing is written outside the temporary home but pytest's own temporary files.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${1:-cuda}"
REPS="${GPU_CHECK_REPS:-5}"

python - "$DEVICE" <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA GPU (torch " + torch.__version__ + "): run it on a machine with one")
print(f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}; device {sys.argv[1]}")
EOF

SOURCE_HOME="${ETR_HUB_HOME:-$(python -c 'from etr_hub.config import settings; print(settings().home)')}"
HOME_DIR="$(mktemp -d -t etr-gpu-check-XXXXXX)"
trap 'rm -rf "$HOME_DIR"' EXIT
export ETR_HUB_HOME="$HOME_DIR"
unset ETR_HUB_DATABASE_URL ETR_HUB_DEVICE ETR_HUB_DTYPE
if [ -f "$SOURCE_HOME/models/smollm2-135m-instruct/etr_hub_source.json" ]; then
    ln -s "$SOURCE_HOME/models" "$HOME_DIR/models"  # the converted embedded model, read only
fi

echo "== 1. CUDA tests"
python -m pytest -q -p no:xdist -p no:cacheprovider tests/test_devices.py -rs

echo "== 2. decoding and switch ratios on $DEVICE (ETR_HUB_HOME=$HOME_DIR: the meta model alone)"
etr-hub init
for DTYPE in float32 bfloat16; do
    echo "-- $DTYPE"
    python benchmarks/bench_decode.py --device "$DEVICE" --dtype "$DTYPE" --reps "$REPS" --experts 6,1000
done

echo "== 3. etr-hub on $DEVICE in bfloat16, with the shipped experts"
etr-hub expert add plugins/*/ --device "$DEVICE" --dtype bfloat16 >/dev/null
QUESTION="What causes the phases of the Moon?"
etr-hub chat --once "$QUESTION" --device "$DEVICE" --dtype bfloat16 --temperature 0 --max-new-tokens 48 --json \
    | python -c 'import json, sys; r = json.load(sys.stdin); print("route:", r["route"]); print("answer:", r["text"][:300])'
etr-hub explain "$QUESTION" --device "$DEVICE" --dtype bfloat16 --top 3
