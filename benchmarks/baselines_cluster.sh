#!/usr/bin/env bash
# The baselines study's cluster section (docs/results.md, "On the emulated cluster"): every line of
# jobs/baselines.params on a 2-node emulated cluster at each link rate, seeds 0 1 2 interleaved (seed by seed,
# so a slow spell of the host lands on every method alike), at the learning rates the one-host study chose
# (5, and 2 for r = 4), then the tables with the time to the target dev accuracy (BGD's final mean minus 0.5
# points). Needs root (the cluster). Finished run logs are kept, so the script continues where it stopped.
# Usage: sudo bash benchmarks/baselines_cluster.sh [OUT] [RATES]   (default results/baselines/cluster, "1gbit 100mbit")
set -euo pipefail
out="${1:-results/baselines/cluster}"
read -r -a rates <<< "${2:-1gbit 100mbit}"
name=bstudy
hes-mpi data fetch mnist >&2
for rate in "${rates[@]}"; do
    d="$out/$rate"
    echo "== 2 nodes at $rate -> $d" >&2
    hes-mpi cluster down --name "$name" >&2
    hes-mpi cluster up --name "$name" --nodes 2 --link "$rate" >&2
    trap 'hes-mpi cluster down --name "$name" >&2' EXIT
    hes-mpi cluster run --name "$name" -- sweep jobs/baselines.params --seeds 0 1 2 --interleave \
        --only bgd 'bgd_*' hes_r2 reuse_r2 'localsgd_*' --args="--no-eval-train --lr 5" --out-dir "$d"
    hes-mpi cluster run --name "$name" -- sweep jobs/baselines.params --seeds 0 1 2 --interleave \
        --only hes_r4 reuse_r4 --args="--no-eval-train --lr 2" --out-dir "$d"
    hes-mpi cluster down --name "$name" >&2
    trap - EXIT
    python analysis/compare.py "$d"/*_s*.h5 --out-dir "$d/tables" > /dev/null
    python analysis/plots.py "$d"/*_s*.h5 --out-dir "$d/figures" > /dev/null
    echo "== $rate: $d/tables/pareto.md, savings.md; $d/figures/pareto.png" >&2
done
