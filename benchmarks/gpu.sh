#!/usr/bin/env bash
# GPU benchmarks at Qwen2.5-0.5B and Qwen2.5-1.5B shape, random bf16 weights, no internet, < 8 minutes
# (the parts' time limits add up to 530 s):
#  1. gpu_bench.py per shape: peak torch.cuda.max_memory_allocated, counted training state, tokens/s, MFU per
#     method, activation memory with/without checkpointing, projector refresh cost (batch 4 x 1024);
#  2. gpu_bench.py at 1.5B with activation checkpointing for every method, batch 1 x 2048 (where the training
#     state, not activations, decides the peak);
#  3. speed.py at 1.5B: the methods interleaved, 1 and 4 micro-batches per optimizer step.
# Results: one JSON per part, summary.md (every table) and log.txt (machine facts, stderr) in $RESULTS.
#
#   bash benchmarks/gpu.sh                # on a GPU machine (python3 with torch + transformers + peft)
#   DRY_RUN=1 bash benchmarks/gpu.sh      # CPU, toy sizes: checks the script end to end (the tests run this)
#
# galore8bit needs bitsandbytes + galore-torch; a folder of wheels in $WHEELS (default ./.whl) is installed
# first when present (no index is reached). A part that fails or runs out of time is reported; the rest run.
set -u -o pipefail  # a part killed by its time limit must count as failed, not hide behind tee
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
results="${RESULTS:-$root/gpu-results}"
wheels="${WHEELS:-$root/.whl}"
py="${PYTHON:-python3}"
mkdir -p "$results"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1 && [ -z "${DRY_RUN:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/convlearn-site \
    "$wheels"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/convlearn-site"
fi
big=Qwen/Qwen2.5-1.5B-Instruct
if [ -n "${DRY_RUN:-}" ]; then
  mem=(--device cpu --precision fp32 --tiny --batch 1 --seq 16 --steps 2)
  ckpt=(--device cpu --precision fp32 --tiny --batch 1 --seq 32 --steps 2 --checkpointing)
  speed=(--device cpu --precision fp32 --tiny --batch 1 --seq 16 --rounds 5 --steps 2 --refresh randomized warm)
  shapes=(Qwen/Qwen2.5-0.5B-Instruct)
  big=Qwen/Qwen2.5-0.5B-Instruct
  limits=(120 120 120 120 120)
else
  mem=(--batch 4 --seq 1024 --steps 4 --budget 60)
  ckpt=(--batch 1 --seq 2048 --steps 4 --budget 60 --checkpointing --methods adamw "adamw layer-wise" "lora r=64"
        "galore r=128"
        "galore r=128 layer-wise" "layer-wise r=128 + embeddings projected" "layer-wise r=128 + embeddings frozen"
        "layer-wise r=128 + embeddings frozen + chunked loss" "galore8bit r=128")
  speed=(--device cuda --precision bf16-mixed --batch 4 --seq 1024 --rounds 5 --steps 2 --refresh randomized warm)
  shapes=(Qwen/Qwen2.5-0.5B-Instruct "$big")
  limits=(80 100 80 120 150)  # seconds; measured on an H200: 48, 60, 54, >80 (speed), ~110 (accum 4)
fi
status=0
log="$results/log.txt"
summary="$results/summary.md"
: > "$summary"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; \
  "$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__)"; } > "$log" 2>&1
cat "$log"

part() {  # part LIMIT_S NAME COMMAND...: run one part, its tables into summary.md, its stderr into log.txt
  local limit=$1 name=$2; shift 2
  echo "== $name ($(date -u +%H:%M:%S))" | tee -a "$log"
  timeout "$limit" "$@" --json "$results/$name.json" 2>>"$log" | tee -a "$summary" \
    || { status=1; echo "== $name failed or ran out of its $limit s" | tee -a "$log"; tail -5 "$log"; }
  echo >> "$summary"
}
i=0
for shape in "${shapes[@]}"; do
  part "${limits[$i]}" "memory-$(basename "$shape")" "$py" "$here/gpu_bench.py" --shape "$shape" "${mem[@]}"
  i=$((i + 1))
done
part "${limits[2]}" "memory-checkpointing-$(basename "$big")" "$py" "$here/gpu_bench.py" --shape "$big" "${ckpt[@]}"
part "${limits[3]}" speed "$py" "$here/speed.py" --shape "$big" "${speed[@]}"
part "${limits[4]}" speed-accum4 "$py" "$here/speed.py" --shape "$big" "${speed[@]}" --accum 4
echo "== done ($(date -u +%H:%M:%S))" | tee -a "$log"
exit $status
