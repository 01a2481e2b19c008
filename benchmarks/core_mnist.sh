#!/usr/bin/env bash
# Reproduces the "Measured on real MNIST" table of docs/results.md: BGD and H-ES (r = 2) on 2 ranks, defaults, 30 epochs.
# Usage: bash benchmarks/core_mnist.sh [OUTDIR] [extra train options...]
set -euo pipefail
out="${1:-results/core}"
shift || true
mkdir -p "$out"
hes-mpi data fetch mnist
mpiexec -n 2 hes-mpi train --algo bgd --out "$out/bgd.h5" --force "$@"
mpiexec -n 2 hes-mpi train --algo hes --r 2 --out "$out/hes_r2.h5" --force "$@"
hes-mpi summary "$out/bgd.h5" "$out/hes_r2.h5" --markdown
