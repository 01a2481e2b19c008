#!/usr/bin/env bash
# The baselines study's final runs (docs/results.md, "Baselines"): every line of jobs/baselines.params at the
# learning rate the study's tuning chose for it on that dataset (its tuning.md, reproduced in results.md),
# seeds 0-4 interleaved (seed by seed, so a slow spell of the host lands on every method alike), 2 ranks, then
# the tables with the mean dev accuracy of the last 5 epochs beside the last epoch's, the time to the target
# and the test accuracy, and the figures. Fashion-MNIST needs Debian's dataset-fashion-mnist. Finished run
# logs are kept, so the script continues where it stopped.
# Usage: bash benchmarks/baselines_final.sh mnist|fashion [OUT] (default results/baselines/DATASET)
set -euo pipefail
dataset="${1:?usage: bash benchmarks/baselines_final.sh mnist|fashion [OUT]}"
out="${2:-results/baselines/$dataset}"
case "$dataset" in
    mnist) data="mnist"; lr5="bgd bgd_fp16 bgd_topk25 bgd_topk12 bgd_topk1 bgd_powersgd4 bgd_powersgd1 hes_r2 reuse_r2
                localsgd_h2 localsgd_h4"; lr2="hes_r4 reuse_r4"; lr1="" ;;
    fashion) data="idx:/usr/share/datasets/fashion-mnist"; lr5="bgd bgd_fp16 bgd_topk12 bgd_powersgd4 bgd_powersgd1
                localsgd_h2 localsgd_h4"; lr2="bgd_topk25 bgd_topk1 hes_r2"; lr1="hes_r4 reuse_r2 reuse_r4" ;;
    *) echo "baselines_final.sh: error: the dataset is mnist or fashion, not '$dataset'" >&2; exit 2 ;;
esac
sweep() {  # sweep LR LINES...
    local lr="$1"; shift
    [ $# -gt 0 ] || return 0
    mpiexec -n 2 hes-mpi sweep jobs/baselines.params --seeds 0 1 2 3 4 --interleave --out-dir "$out" \
        --only "$@" --args="--no-eval-train --data $data --lr $lr"
}
# shellcheck disable=SC2086
{ sweep 5 $lr5; sweep 2 $lr2; sweep 1 $lr1; }
python analysis/compare.py "$out"/*_s*.h5 --last-epochs 5 --test --out-dir "$out/tables"
python analysis/plots.py "$out"/*_s*.h5 --out-dir "$out/figures" > /dev/null
