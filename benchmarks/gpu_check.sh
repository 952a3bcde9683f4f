#!/usr/bin/env bash
# The GPU path, end to end through main.py, in at most ~5 minutes on one GPU:
#   fit a few hundred steps of the full-size GPT-2 shape (12 x 768, random weights, the real vocabulary) in
#   bf16-mixed, then predict 10,000 real posts with each runtime that applies on a GPU (torch fp32 and bf16;
#   onnxruntime runs on the CPU here), and print samples/s and posts/s, timed from inside by speed_meter.StepTimer.
#
#   bash benchmarks/gpu_check.sh                        # on a machine with an NVIDIA GPU
#   ACCELERATOR=cpu STEPS=4 POSTS=200 WIDTH=64 LAYERS=2 HEADS=2 bash benchmarks/gpu_check.sh   # a plumbing check
#
# Settings (environment): ACCELERATOR (gpu), STEPS (300 training steps), POSTS (10000), BATCH (16, training),
# EVAL_BATCH (256, predict), WIDTH/LAYERS/HEADS (768/12/12), OUT (a folder for the JSON reports; default: temporary).
set -euo pipefail
cd "$(dirname "$0")/.."
ACCELERATOR=${ACCELERATOR:-gpu} STEPS=${STEPS:-300} POSTS=${POSTS:-10000} BATCH=${BATCH:-16}
EVAL_BATCH=${EVAL_BATCH:-256} WIDTH=${WIDTH:-768} LAYERS=${LAYERS:-12} HEADS=${HEADS:-12}
work=$(mktemp -d)
OUT=${OUT:-$work}
mkdir -p "$OUT"
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="benchmarks:.${PYTHONPATH:+:$PYTHONPATH}" WEIBO_SENTIMENT_CACHE="$work/onnx-cache"

python - <<EOF
import torch
from weibo_sentiment.hardware import describe_cpu
print("torch", torch.__version__, "| CPU:", describe_cpu())
if "$ACCELERATOR" == "gpu":
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    print("GPU:", torch.cuda.get_device_name(0), "| bf16 supported:", torch.cuda.is_bf16_supported())
EOF

python -m tools.tiny_models gpt2 "$work/model" --width "$WIDTH" --layers "$LAYERS" --heads "$HEADS" --positions 1024 >/dev/null
python - "$work/posts.csv" "$POSTS" <<'EOF'
import csv, sys
with open("data/sample/weibo_senti_4k.csv", encoding="utf-8", newline="") as f:
    texts = [row["review"] for row in csv.DictReader(f)]
with open(sys.argv[1], "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "review"])
    writer.writerows((f"p{i}", texts[i % len(texts)]) for i in range(int(sys.argv[2])))
EOF

common=(--config configs/gpt2_chinese_lora.yaml --model.model_name_or_path "$work/model"
        --trainer.accelerator "$ACCELERATOR" --trainer.devices 1 --trainer.enable_progress_bar false
        --trainer.enable_model_summary false --trainer.default_root_dir "$work/runs")
timer() { echo --trainer.callbacks+=speed_meter.StepTimer "--trainer.callbacks.report_path=$OUT/$1.json" \
               --trainer.callbacks.warmup_steps=5; }

echo "fit: $STEPS steps, batch $BATCH, bf16-mixed"
python main.py fit "${common[@]}" --data.train_path data/sample/weibo_senti_4k.csv --data.batch_size "$BATCH" \
    --trainer.precision bf16-mixed --trainer.max_steps "$STEPS" --trainer.limit_val_batches 0 \
    --trainer.num_sanity_val_steps 0 --trainer.callbacks=lightning.pytorch.callbacks.LearningRateMonitor \
    --checkpoint.monitor=null $(timer fit-bf16) >"$work/fit.log" 2>&1 || { tail -30 "$work/fit.log"; exit 1; }

for precision in 32-true bf16-mixed; do
    echo "predict: $POSTS posts, torch $precision, batches of up to $EVAL_BATCH"
    python main.py predict "${common[@]}" --model.adapter_path "$(ls -d "$work"/runs/lightning_logs/version_0/adapter)" \
        --data.predict_path "$work/posts.csv" --data.eval_batch_size "$EVAL_BATCH" --trainer.precision "$precision" \
        --predict_writer.output_path "$work/predictions-$precision.csv" $(timer "predict-$precision") \
        >"$work/predict-$precision.log" 2>&1 || { tail -30 "$work/predict-$precision.log"; exit 1; }
done

python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
fit = json.loads((out / "fit-bf16.json").read_text())
print(f"fit bf16-mixed: {fit['samples'] / fit['seconds']:.1f} samples/s over {fit['timed_batches']} timed steps")
for precision in ("32-true", "bf16-mixed"):
    report = json.loads((out / f"predict-{precision}.json").read_text())
    print(f"predict torch {precision}: {report['posts'] / report['seconds']:.0f} posts/s ({report['posts']} posts, "
          f"{report['seconds']:.1f} s)")
EOF
