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
SWEEP_S=${SWEEP_S:-240}          # time cap of each sweep run
SWEEP=${SWEEP:-benchmarks/sweeps/quality1.txt}
TESTS=${TESTS:-tests}             # what pytest runs
BENCH=${BENCH:-1}                 # 0: skip the benchmarks
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/bench.log"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/bench.log"

# 1. recipe sweep in the background: one run per line of $SWEEP (name, then command and flags)
sweep_dir=/tmp/sweep
rm -rf "$sweep_dir"; mkdir -p "$sweep_dir"
run() {
  local name=$1; shift
  ( NEURALSORT_PROGRESS=0 timeout "$SWEEP_S" $PY -m neuralsort.experiments.cli "$@" --device cuda --threads 1 \
      --data_dir "$DATA" --out "$sweep_dir/$name" --num_epochs 10 \
      --lr_schedule cosine --val_sequences 1000 --test_sequences 2500 \
      > "$sweep_dir/$name.log" 2>&1; echo "$name rc=$?" >> "$sweep_dir/rc.txt" ) &
}
while read -r name args; do
  case "$name" in ''|'#'*) continue ;; esac
  # shellcheck disable=SC2086
  run "$name" $args
done < "$SWEEP"

# 2. the test suite meanwhile (CPU-heavy; the CUDA cases are small)
# shellcheck disable=SC2086
timeout 200 $PY -m pytest -q -p no:cacheprovider -n 3 $TESTS > "$OUT/pytest.log" 2>&1
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
[ "$BENCH" = 1 ] || { echo done; exit 0; }
timeout 120 $PY benchmarks/ops.py --device cuda --repeats 50 --budget_s 4 --out "$OUT" >> "$OUT/bench.log" 2>&1
mv "$OUT"/ops_cuda-*.csv "$OUT/ops_cuda.csv" 2>/dev/null; rm -f "$OUT"/ops_cuda-*.png
timeout 120 $PY benchmarks/train_step.py --device cuda --procs 1 --amp off bf16 --steps 20 \
  --out /tmp/ts >> "$OUT/bench.log" 2>&1
cp /tmp/ts/*.csv "$OUT/train_step.csv" 2>/dev/null
echo done
