#!/usr/bin/env bash
# A lent GPU's one command (docs/gpu_training.md): continue the shipped checkpoints/omni-tiny with the
# last stages' mixture at the GPU's batch, export the EMA weights in bf16 and copy what comes back to
# $OUT: the weight shards, their index, config.json, log.jsonl, train_config.json and the GPU's
# utilisation readings (6 files; $OUT brings back at most 8 of at most 16 MB each).
#
#   device tool:  run(command="OUT=$OUT bash scripts/gpu_lease.sh", timeout_s=600)   then give_back
#   on the CPU:   OUT=/tmp/x DEVICE=cpu ROWS=1 WORKERS=0 STEPS=2 bash scripts/gpu_lease.sh   (a dry run)
#
# The settings are environment variables (defaults: the plan of docs/gpu_training.md for one H100/H200);
# anything after the script's name is passed on to `python3 -m omni.train` and overrides them; PYTHON names
# another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1

: "${OUT:?set OUT, the folder whose files come back}"
DEVICE=${DEVICE:-cuda}
ROWS=${ROWS:-64}
WORKERS=${WORKERS:-14}
THREADS=${THREADS:-4}
STEPS=${STEPS:-3500}        # the cosine schedule ends here; MINUTES stops the run first if it is slower
MINUTES=${MINUTES:-8.3}     # training's guard inside the device's 600 s a command (export and copy after it)
DATA_SEED=${DATA_SEED:-75}  # not used by any shipped stage (stage 14b's slices took 69 and 73)
LR=${LR:-2e-4}
WORLD_REVISION=${WORLD_REVISION:-3}  # docs/world_audit.md's mends and vqa's left_right step read off the inventory
                                     # (2: the mends alone; 1: the shipped model's world)
# spatial's "deduced" drill (the step from the thought's coordinates to the option, on text alone), which revision
# 2's behind-the-camera answers need (and revision 3's, which keeps them; docs/experiments.md, "A drill for the
# behind quadrants"); 0 with revision 1
DEDUCED=${DEDUCED:-$([[ $WORLD_REVISION =~ ^[0-9]+$ ]] && (( WORLD_REVISION >= 2 )) && echo 4 || echo 0)}
# vqa's "deduced" drill (the step from the numbers a thought read to its answer, on text alone; from revision 2
# on the left_right verdict too, in revision 3 its whole step, copied from the inventory), beside its direct and
# think forms' 1 each (docs/experiments.md, "VQA's relation answers", "Left_right read off the inventory")
VQA_DEDUCED=${VQA_DEDUCED:-1}
RUN=${RUN:-runs/lease}
PY=${PYTHON:-python3}       # the device's python3 holds its PyTorch (.library/device/KINDS.md)
for name in ROWS WORKERS THREADS STEPS DATA_SEED WORLD_REVISION DEDUCED VQA_DEDUCED; do
    [[ ${!name} =~ ^[0-9]+$ ]] || { echo "gpu_lease.sh: $name must be a whole number, got '${!name}'" >&2; exit 2; }
done
[[ -e $RUN ]] && { echo "gpu_lease.sh: $RUN exists; set RUN to a new directory" >&2; exit 2; }
mkdir -p "$OUT"

if command -v nvidia-smi >/dev/null 2>&1; then  # the GPU's utilisation every 10 s, for the next plan
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$OUT/gpu.csv" 2>&1 &
    SMI=$!
    trap 'kill $SMI 2>/dev/null || true' EXIT
fi

# stage 13's mixture (README, "What checkpoints/omni-tiny does": the s15 slice) from the shipped model, drawn
# from the world's revision WORLD_REVISION
"$PY" -m omni.train --out "$RUN" --preset tiny --device "$DEVICE" --workers "$WORKERS" --threads "$THREADS" \
    --rows "$ROWS" --row-len 1024 --accum 1 --init-from checkpoints/omni-tiny --lr "$LR" --warmup 100 \
    --ema 0.998 --keep 1 --data-seed "$DATA_SEED" --steps "$STEPS" --save-every 1000 --max-minutes "$MINUTES" \
    --source-latents --source-cond --pair-cond --pose-head --model '{"w_pose": 10}' --pose-motions orbit,move_turn \
    --world-revision "$WORLD_REVISION" \
    --form-weights '{"vqa": {"direct": 1, "think": 1, "deduced": '"$VQA_DEDUCED"'}, "spatial": {"direct": 4, "pose": 3, "reasoned": 2, "conclusion": 1, "views": 3, "reasoned+views": 5, "deduced": '"$DEDUCED"'}, "t2i": {"long+visual": 4, "short+visual": 2}, "depth": {"direct": 1, "detailed": 1.5, "depthcap": 1.5, "depthcap+visual": 2}}' \
    --task-weights '{"vqa": 3.0, "t2i": 1.5, "spatial": 3.0, "depth": 2.0, "pose": 7.0, "nvs": 2.0, "video": 3.5, "edit": 3.5}' \
    "$@"

"$PY" -c "import sys; from omni.train import export; export(sys.argv[1], sys.argv[1] + '-m', dtype='bfloat16')" "$RUN"
cp "$RUN-m"/config.json "$RUN-m"/model*.safetensors* "$RUN"/log.jsonl "$RUN"/train_config.json "$OUT"/
ls -l "$OUT"
