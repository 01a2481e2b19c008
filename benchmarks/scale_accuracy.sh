#!/usr/bin/env bash
# The accuracy-at-scale runs of jobs/scale.params: each N of NS (default 2 8 16 32) as one sweep of
# `mpiexec -n N` ranks (oversubscribed when N exceeds the cores; Open MPI needs --oversubscribe, which
# HES_MPI_MPIEXEC_FLAGS passes), run logs in OUT/nN (default results/scale). A finished run log is kept, so
# the script continues where it stopped. Then: python analysis/scale.py OUT
set -euo pipefail
out=${OUT:-results/scale}
read -r -a ns <<< "${NS:-2 8 16 32}"
read -r -a flags <<< "${HES_MPI_MPIEXEC_FLAGS:-}"
for n in "${ns[@]}"; do
    echo "== N = $n ranks -> $out/n$n"
    mpiexec "${flags[@]}" -n "$n" hes-mpi sweep jobs/scale.params --seeds 0 1 2 --args=--no-eval-train \
        --out-dir "$out/n$n"
done
