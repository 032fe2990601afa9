#!/usr/bin/env bash
# One prepared run on a CUDA machine: the test suite (CUDA cases included), the operator and
# training-step benchmarks on the GPU, and a short sweep of training recipes for the sorting and
# median experiments (all runs side by side on one GPU, one CPU thread each).
#
#   DATA=path/to/data OUT=path/to/out bash benchmarks/cuda_check.sh
#
# Writes into $OUT: pytest.log, ops_cuda.csv, bench.log, train_step.csv, sweep.json, sweep.log.
set -u
DATA=${DATA:-../shared/data}
OUT=${OUT:-/tmp/cuda_check}
SWEEP_S=${SWEEP_S:-240}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/bench.log"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/bench.log"

# 1. recipe sweep in the background: name, command, n, method, lr, regroup, batch, extra flags
sweep_dir=/tmp/sweep
rm -rf "$sweep_dir"; mkdir -p "$sweep_dir"
run() {
  local name=$1; shift
  ( timeout "$SWEEP_S" $PY -m neuralsort.experiments.cli "$@" --device cuda --threads 1 \
      --data_dir "$DATA" --out "$sweep_dir/$name" --num_epochs 10 --steps_per_epoch 500 \
      --lr_schedule cosine --val_sequences 1000 --test_sequences 2500 \
      > "$sweep_dir/$name.log" 2>&1; echo "$name rc=$?" >> "$sweep_dir/rc.txt" ) &
}
run s3-lr1e-3-r1  sort --n 3 --batch_size 20 --lr 1e-3 --regroup 1
run s3-lr1e-3-r8  sort --n 3 --batch_size 20 --lr 1e-3 --regroup 8
run s3-lr2e-3-r8  sort --n 3 --batch_size 20 --lr 2e-3 --regroup 8
run s3-lr3e-3-r16 sort --n 3 --batch_size 20 --lr 3e-3 --regroup 16
run s5-lr1e-3-r1  sort --n 5 --batch_size 12 --lr 1e-3 --regroup 1
run s5-lr1e-3-r8  sort --n 5 --batch_size 12 --lr 1e-3 --regroup 8
run s5-lr2e-3-r8  sort --n 5 --batch_size 12 --lr 2e-3 --regroup 8
run s5-lr3e-3-r16 sort --n 5 --batch_size 12 --lr 3e-3 --regroup 16
run q5-lr1e-3-r1  quantile --n 5 --batch_size 10 --lr 1e-3 --regroup 1
run q5-lr1e-3-r8  quantile --n 5 --batch_size 10 --lr 1e-3 --regroup 8
run q5-lr2e-3-r8  quantile --n 5 --batch_size 10 --lr 2e-3 --regroup 8
run q5-lr3e-3-r16 quantile --n 5 --batch_size 10 --lr 3e-3 --regroup 16
run q5-lr2e-3-r8-tau4 quantile --n 5 --batch_size 10 --lr 2e-3 --regroup 8 --tau 4

# 2. the test suite meanwhile (CPU-heavy; the CUDA cases are small)
timeout 200 $PY -m pytest -q -p no:cacheprovider -n 3 tests > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"
wait

# 3. collect the sweep
$PY - "$sweep_dir" > "$OUT/sweep.json" <<'PYEOF'
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
out = {}
for d in sorted(p for p in root.iterdir() if p.is_dir()):
    rec = {}
    m = d / "metrics.json"
    if m.exists():
        rec["metrics"] = json.loads(m.read_text())
    log = d / "log.jsonl"
    if log.exists():
        rec["log"] = [json.loads(line) for line in log.read_text().splitlines()]
    out[d.name] = rec
out["rc"] = (root / "rc.txt").read_text() if (root / "rc.txt").exists() else ""
print(json.dumps(out, indent=1))
PYEOF
tail -n 3 "$sweep_dir"/*.log > "$OUT/sweep.log" 2>&1

# 4. benchmarks, with the GPU to themselves
timeout 120 $PY benchmarks/ops.py --device cuda --repeats 50 --budget_s 4 --out "$OUT" >> "$OUT/bench.log" 2>&1
mv "$OUT"/ops_cuda-*.csv "$OUT/ops_cuda.csv" 2>/dev/null; rm -f "$OUT"/ops_cuda-*.png
timeout 120 $PY benchmarks/train_step.py --device cuda --procs 1 --amp off bf16 --steps 20 \
  --out /tmp/ts >> "$OUT/bench.log" 2>&1
cp /tmp/ts/*.csv "$OUT/train_step.csv" 2>/dev/null
echo done
