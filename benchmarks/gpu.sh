#!/usr/bin/env bash
# GPU benchmarks at Qwen2.5-0.5B and Qwen2.5-1.5B shape, random bf16 weights, no internet, < 8 minutes:
# peak memory (torch.cuda.max_memory_allocated), tokens/s and MFU per method (gpu_bench.py), then the
# interleaved side-by-side speed run (speed.py). Results go to $RESULTS (default ./gpu-results).
#
#   bash benchmarks/gpu.sh                # on a GPU machine (python3 with torch + transformers + peft)
#   DRY_RUN=1 bash benchmarks/gpu.sh      # CPU, toy sizes: checks the script end to end (the tests run this)
#
# galore8bit needs bitsandbytes + galore-torch; a folder of wheels in $WHEELS (default ./.whl) is installed
# first when present (no index is reached). Each step's failure is reported and the others still run.
set -u
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
if [ -n "${DRY_RUN:-}" ]; then
  common=(--device cpu --dtype float32 --tiny --batch 1 --seq 16 --steps 2)
  speed=(--device cpu --dtype float32 --batch 1 --seq 16 --reps 1 --steps 1 --refresh randomized warm)
  shapes=(Qwen/Qwen2.5-0.5B-Instruct)
  speed_shape=(--shape Qwen/Qwen2.5-0.5B-Instruct --tiny)
else
  common=(--batch 4 --seq 1024 --steps 5 --budget 150)
  speed=(--device cuda --dtype bfloat16 --batch 4 --seq 1024 --reps 3 --steps 4 --refresh randomized warm)
  shapes=(Qwen/Qwen2.5-0.5B-Instruct Qwen/Qwen2.5-1.5B-Instruct)
  speed_shape=(--shape Qwen/Qwen2.5-1.5B-Instruct)
fi
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; \
  "$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__)"; } > "$results/machine.txt" 2>&1
cat "$results/machine.txt"
for shape in "${shapes[@]}"; do
  name="$(basename "$shape")"
  timeout 200 "$py" "$here/gpu_bench.py" --shape "$shape" "${common[@]}" --json "$results/memory-$name.json" \
    2>"$results/memory-$name.err" | tee "$results/memory-$name.md" || { status=1; tail -5 "$results/memory-$name.err"; }
done
timeout 150 "$py" "$here/speed.py" "${speed[@]}" "${speed_shape[@]}" --json "$results/speed.json" \
  2>"$results/speed.err" | tee "$results/speed.md" || { status=1; tail -5 "$results/speed.err"; }
exit $status
