#!/usr/bin/env bash
# Time to the target dev accuracy against N for every method of the baselines study (docs/results.md, "Time to
# accuracy against N"): one 2-rank MNIST run of each method (3 epochs: what is replayed is one epoch of its
# calls and compute) replayed on N simulated nodes with the global batch fixed (--scaling strong) on a 1 GbE
# star, a 10 GbE fat tree (both with SMPI factors 1) and a 100G fat tree (SimGrid's default factors), then
# analysis/scale.py with the accuracy runs: the scale study's (BGD, H-ES r = 2, reuse r = 2, local SGD H = 4
# and PowerSGD rank 4 at 2-32 ranks, benchmarks/scale_accuracy.sh) and the baselines study's 2-rank runs of
# fp16 and top-k (seeds 0 1 2 at lr 5: benchmarks/baselines_cluster.sh, whose parameters are bitwise those
# of one host), their accuracy assumed from 2 ranks at every larger N.
# Usage: bash benchmarks/scale_time_to_target.sh [OUT] [SCALE_RUNS] [BASELINE_RUNS]
#   (defaults results/scale-ttt, results/scale, results/baselines/cluster/1gbit)
set -euo pipefail
out="${1:-results/scale-ttt}"
scale="${2:-results/scale}"
baselines="${3:-results/baselines/cluster/1gbit}"
mkdir -p "$out/runs"
hes-mpi data fetch mnist >&2
methods=(
    "bgd|--algo bgd"
    "hes_r2|--algo hes --r 2"
    "reuse_r2|--algo reuse --r 2"
    "localsgd_h4|--algo localsgd --r 4"
    "bgd_powersgd4|--algo bgd --compress powersgd:4"
    "bgd_fp16|--algo bgd --compress fp16"
    "bgd_topk25|--algo bgd --compress topk:0.25"
)
for m in "${methods[@]}"; do
    name="${m%%|*}"
    read -r -a opts <<< "${m#*|}"
    [ -s "$out/runs/$name.h5" ] || mpiexec -n 2 hes-mpi train "${opts[@]}" --lr 5 --epochs 3 --no-eval-train \
        --out "$out/runs/$name.h5" --force > /dev/null
done
dense=("$out"/runs/{bgd,hes_r2,reuse_r2,localsgd_h4,bgd_powersgd4,bgd_fp16}.h5)
# top-k's allgather grows with N (every rank receives N blocks): replayed up to 32 nodes
for spec in "star:1gbit,30us|1" "fattree:10gbit,5us|1" "fattree:100gbit,500ns|default"; do
    platform="${spec%%|*}"
    factors="${spec#*|}"
    hes-mpi simulate "${dense[@]}" --nodes 2 8 32 128 512 --platform "$platform" --scaling strong \
        --smpi-factors "$factors" --json
    hes-mpi simulate "$out/runs/bgd_topk25.h5" --nodes 2 8 32 --platform "$platform" --scaling strong \
        --smpi-factors "$factors" --json
done > "$out/simulated.jsonl"
python analysis/scale.py "$scale" "$baselines"/{bgd_fp16,bgd_topk25}_s*.h5 \
    --simulated "$out/simulated.jsonl" --out-dir "$out"
