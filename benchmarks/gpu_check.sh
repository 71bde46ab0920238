#!/usr/bin/env bash
# The GPU checks in one go, sized for a short loan of a GPU machine: about 6 minutes on an H200, and at most 550 s
# however slow a step is (every step has its own timeout), inside the device tool's 600 s per command:
#   1. the tests marked `gpu` (tests/test_gpu.py): augmentation on the device against the CPU, bf16 autocast and
#      channels_last, fp16 with a grad scaler, a GPU run resumed and evaluated on the CPU, a short run that beats
#      labels-only training;
#   2. benchmarks/throughput.py on the GPU: the small CNN and WRN-28-2, fewlabels against the conventional pipeline
#      (per-image torchvision transforms in DataLoader workers);
#   3. a FixMatch run on Fashion-MNIST at 40 labels with a 2-minute budget (steps reached, accuracy).
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]      # default: benchmarks/results/gpu
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_BUDGET=20s GPU_CHECK_MODELS=cnn GPU_CHECK_STEPS=5 \
#     bash benchmarks/gpu_check.sh /tmp/dry           # a dry run of the script without a GPU
#
# Needs torch with CUDA, torchvision, numpy, scikit-learn, safetensors, pyyaml, matplotlib, tqdm and pytest; runs
# from the source tree (no install). Fashion-MNIST's IDX files are read from $FEWLABELS_GPU_DATA (default
# .gpu/data, which `make gpu-data` fills from the Debian package) or else the usual places.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-benchmarks/results/gpu}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
DATA=${FEWLABELS_GPU_DATA:-.gpu/data}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-2m}
MODELS=${GPU_CHECK_MODELS:-cnn wrn28_2}
STEPS=${GPU_CHECK_STEPS:-30}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FEWLABELS_TEST_DEVICE="$DEVICE"
ROOT=() TRAIN_ROOT=()
[ -d "$DATA" ] && ROOT=(--data-root "$DATA") TRAIN_ROOT=(--set "data.data_root=$PWD/$DATA")
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  nproc
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')"
} 2>&1 | tee "$RESULTS/env.txt"

echo "== 1. tests marked gpu"
timeout 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$RESULTS/gpu-tests.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== 2. throughput on the GPU"
workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))
for model in $MODELS; do
  timeout 100 "$PY" benchmarks/throughput.py --device "$DEVICE" --model "$model" --workers "$workers" --steps "$STEPS" \
    "${ROOT[@]}" --tag="-$DEVICE-$model" || status=1
  mv "benchmarks/results/throughput-$DEVICE-$model.csv" "benchmarks/results/throughput-$DEVICE-$model.md" "$RESULTS/" \
    2>/dev/null || true  # into RESULTS only: a dry run leaves benchmarks/results/ as it was
done

echo "== 3. FixMatch, Fashion-MNIST, 40 labels, $BUDGET on $DEVICE"
rm -rf /tmp/fewlabels-gpu-fm40
timeout 170 "$PY" -m fewlabels train --dataset fashion-mnist "${TRAIN_ROOT[@]}" --labels-per-class 4 --algorithm fixmatch \
  --model cnn --budget "$BUDGET" --device "$DEVICE" --seed 0 --no-progress --out /tmp/fewlabels-gpu-fm40 2>&1 | tail -n 5 | tee "$RESULTS/fm40.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
cp /tmp/fewlabels-gpu-fm40/summary.json "$RESULTS/fm40-summary.json" 2>/dev/null || true

echo "gpu_check: exit status $status"
exit $status
