#!/usr/bin/env bash
# The operators on a CUDA GPU in one short run (about 5 minutes): the experimental Triton kernels
# checked against the PyTorch path on the device, the operator tests' CUDA cases, and the operator
# benchmark with the Triton rows beside the PyTorch path and the floor.
#
#   OUT=path/to/out bash benchmarks/gpu_ops_check.sh
#
# Writes into $OUT: env.log, triton_cuda.log, test_ops_cuda.log, test_ops_cuda_triton.log,
# bench_cuda.log, ops_cuda-*.csv.
set -u
OUT=${OUT:-/tmp/gpu_ops_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$OUT/env.log" 2>&1

NEURALSORT_TEST_DEVICE=cuda NEURALSORT_TRITON=1 timeout 300 \
  $PY -m pytest -q -p no:cacheprovider tests/triton_interpreted.py > "$OUT/triton_cuda.log" 2>&1
echo "rc=$?" >> "$OUT/triton_cuda.log"

timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_ops.py -k cuda > "$OUT/test_ops_cuda.log" 2>&1
echo "rc=$?" >> "$OUT/test_ops_cuda.log"
# the same operator tests with the Triton kernels switched on
NEURALSORT_TRITON=1 timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_ops.py -k cuda \
  > "$OUT/test_ops_cuda_triton.log" 2>&1
echo "rc=$?" >> "$OUT/test_ops_cuda_triton.log"

timeout 240 $PY benchmarks/ops.py --device cuda --repeats 50 --budget_s 3 --out "$OUT" > "$OUT/bench_cuda.log" 2>&1
echo "rc=$?" >> "$OUT/bench_cuda.log"
tail -n 12 "$OUT/bench_cuda.log"
