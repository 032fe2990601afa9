#!/bin/bash
# benchmarks/dknn_test_flip.py --ks over Table 3's finished CIFAR-10 deterministic dKNN cell (its
# run folder, with best.pt, kept outside the repository in ~/ns-runs), from the repository root;
# writes cifar10-deterministic.jsonl.
cd "$(dirname "$0")/../../.."
PYTHONPATH=$PWD/src python benchmarks/dknn_test_flip.py \
  "$HOME/ns-runs/table3/cpu/cifar10-dknn-deterministic" --ks 1 3 5 7 9 15 25 --threads 1 \
  > results/quality/dknn-k/cifar10-deterministic.jsonl
