#!/bin/bash
# benchmarks/dknn_test_flip.py over the finished dKNN runs of the earlier recipes (run folders
# kept outside the repository, in ~/ns-runs), from the repository root; writes test-flip.jsonl.
cd "$(dirname "$0")/../../.."
R=$HOME/ns-runs/table3
PYTHONPATH=$PWD/src python benchmarks/dknn_test_flip.py \
  $R/cpu-old-fashion-mnist-dknn-deterministic $R/cpu-old-fashion-mnist-dknn-stochastic \
  $R/cpu-old-cifar10-dknn-deterministic $R/cpu-old-cifar10-dknn-stochastic \
  > results/quality/test-flip/test-flip.jsonl
