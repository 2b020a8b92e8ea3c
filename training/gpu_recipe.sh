#!/usr/bin/env bash
# GPU recipe for stage 2 of the embedded model: one command of at most ~9 minutes on one GPU (an H100 here).
#
# Residual v-prediction (the diffused variable is HR - prior; not in the paper, see docs/diffusion-parameterisation.md)
# with Min-SNR-5 weighting, the small UNet fine-tuned from the embedded model's with its output layer zeroed, bf16,
# larger batches and crops than the CPU recipe, a time budget, and EMA weights. The output folder is a complete
# pipeline (files of at most 16 MiB: the small UNet is 13 MB) that `DiffusionPipeline.from_pretrained` loads.
#
#   bash training/gpu_recipe.sh DATA_DIR OUTPUT_DIR [INIT] [extra train_neurop_diff.py arguments]
#
#   DATA_DIR    training images, e.g. ../shared/data/UCMerced_LandUse (the UCMerced convention split is used
#               when the folder's name contains "ucmerced": <class>00-27 train, 28-34 validation)
#   OUTPUT_DIR  the new pipeline folder
#   INIT        where the UNet starts: a pipeline folder (a previous run of this recipe: the second command
#               continues from the first one's EMA UNet) or "embedded" (default: the package's embedded model, whose
#               output layer is then zeroed) or "scratch" (a fresh small UNet, output layer zeroed)
#
# Environment: WHEELS (a folder of wheels to install first, for machines without diffusers / datasets; they go to
# /tmp/site), MINUTES (training minutes, default 7), BATCH (default 64), CROP (default 96), LR (default 1e-4),
# WORKERS (data-loading processes, default 8).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,22p' "$0" >&2
  exit 2
fi
DATA_DIR=$1
OUTPUT_DIR=$2
INIT=${3:-embedded}
shift $(( $# >= 3 ? 3 : 2 ))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
EMBEDDED="$ROOT/src/neurop_diff_diffusers/weights/neurop-diff-ucmerced"
if [ "$INIT" = embedded ]; then
  INIT_ARGS=(--pretrained_unet "$EMBEDDED" --zero_init_output)
elif [ "$INIT" = scratch ]; then
  INIT_ARGS=(--preset small --zero_init_output)
else
  INIT_ARGS=(--pretrained_unet "$INIT")
fi
exec python3 "$ROOT/training/train_neurop_diff.py" \
  --train_data_dir "$DATA_DIR" \
  --neural_operator_path "$EMBEDDED/neural_operator" \
  "${INIT_ARGS[@]}" \
  --output_dir "$OUTPUT_DIR" \
  --residual_diffusion --prediction_type v_prediction --snr_gamma 5 \
  --crop_size "${CROP:-96}" --train_batch_size "${BATCH:-64}" \
  --learning_rate "${LR:-1e-4}" --lr_scheduler constant_with_warmup --lr_warmup_steps 100 \
  --max_train_steps 1000000 --max_train_minutes "${MINUTES:-7}" \
  --mixed_precision bf16 --allow_tf32 --dataloader_num_workers "${WORKERS:-8}" \
  --checkpointing_steps 0 --validation_steps 0 --num_validation_images 4 --validation_inference_steps 20 \
  --report_to none --seed 3 \
  "$@"
