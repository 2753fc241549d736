#!/usr/bin/env bash
# The GPU check, for a session whose task is lent a device machine (see ../.library/device).
#
# Once, here, from the repo root (the data travels as an ignored, carried folder; 30 MB):
#   echo /.devdata/ >> .git/info/exclude; mkdir -p .devdata; cp -r /usr/share/datasets/fashion-mnist .devdata/
# Then one call of the device tool:
#   run(command="bash scripts/device_check.sh", carry=[".devdata"], timeout_s=570)
#
# It trains DSCH at 64 bits on CUDA twice at once, 120 rounds each: the committed recipe with
# tiny_cnn_wide (tiny_cnn at twice the channels) and with the larger small_cnn, then times encoding
# on the GPU against the machine's CPU cores. On CPU small_cnn trailed tiny_cnn after 10 and 20
# rounds (0.696 / 0.719 against 0.744 / 0.762; pilot M2 in benchmarks/results/fmnist_recipe_pilots.json),
# too slow there to go further: the GPU run says whether it catches up by round 120
# (benchmarks/QUALITY_LOG.md, session 12). tiny_cnn_wide scored 0.794 over 3 seeds after 120 rounds
# on CPU against tiny_cnn's 0.790 over seven runs (session 17), the best backbone measured that far.
# From round 100 on the scored weights are the mean of the rounds since (the config's optim.swa_start).
# Each run writes $OUT/gpu_check_<backbone>.json after every scored round, so a run that reaches
# its time limit still returns what it measured. The device machine has torch, numpy, scikit-learn,
# PyYAML, tqdm, pyarrow and fsspec, and no Ray, faiss or s3fs: the training loop and the encoder
# need none of those (benchmarks/gpu_check.py trains through the loop every Ray Train worker runs).
# BACKBONES (default "tiny_cnn_wide small_cnn"; one run each, side by side), ROUNDS, LIMIT_S and WORKERS
# override the backbones, the round count, the per-run time limit and the loader workers; DRY_RUN=1 runs it on a
# machine without a GPU (PYTHON=.venv/bin/python ROUNDS=2 WORKERS=1), to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rayhash-device-check}
ROUNDS=${ROUNDS:-120}
LIMIT_S=${LIMIT_S:-500}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
extra=()
if [ "${DRY_RUN:-0}" = 1 ]; then
  extra=(--allow-cpu --cpu-images=500)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/nvidia_smi.txt"
  "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
fi
[ -d .devdata/fashion-mnist ] || { echo "no .devdata/fashion-mnist: see this script's header, and carry .devdata"; exit 1; }

pids=()
for backbone in ${BACKBONES:-tiny_cnn_wide small_cnn}; do
  timeout "$LIMIT_S" "$PYTHON" benchmarks/gpu_check.py --out "$OUT/gpu_check_$backbone.json" \
    --data.path=.devdata/fashion-mnist --run.rounds="$ROUNDS" --run.loader_workers="${WORKERS:-6}" --run.torch_threads=1 \
    --model.backbone="$backbone" "${extra[@]}" >"$OUT/gpu_check_$backbone.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 8 "$OUT"/gpu_check_*.log
exit $status
