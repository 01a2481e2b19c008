#!/usr/bin/env bash
# The Fashion-MNIST baselines study's final runs (docs/results.md, "Fashion-MNIST"): every line of
# jobs/baselines.params at the learning rate the study's tuning chose for it (its tuning.md, reproduced in
# results.md), seeds 0-4, 2 ranks, then the tables with the mean dev accuracy of the last 5 epochs beside the
# last epoch's, and the time to the target. Debian's dataset-fashion-mnist must be installed. Finished run
# logs are kept, so the script continues where it stopped.
# Usage: bash benchmarks/fashion_baselines.sh [OUT] (default results/baselines/fashion)
set -euo pipefail
out="${1:-results/baselines/fashion}"
data="idx:/usr/share/datasets/fashion-mnist"
common="--no-eval-train --data $data"
sweep() { mpiexec -n 2 hes-mpi sweep jobs/baselines.params --seeds 0 1 2 3 4 --interleave --out-dir "$out" "$@"; }
sweep --only bgd bgd_fp16 bgd_topk12 bgd_powersgd4 bgd_powersgd1 localsgd_h2 localsgd_h4 --args="$common --lr 5"
sweep --only bgd_topk25 bgd_topk1 hes_r2 --args="$common --lr 2"
sweep --only hes_r4 reuse_r2 reuse_r4 --args="$common --lr 1"
python analysis/compare.py "$out"/*_s*.h5 --last-epochs 5 --out-dir "$out/tables"
