#!/usr/bin/env bash
# The profile of the hot path in benchmarks/README.md: py-spy samples each rank of a 2-rank H-ES training
# run (default options, MNIST) and the step samples are attributed to their innermost hes_mpi frame
# (a Numba kernel or a BLAS call shows as the line that calls it).
# Usage: bash benchmarks/profile.sh [OUTDIR] [extra train options, e.g. --plain or --algo bgd]
# Needs py-spy (pip install py-spy); on some systems it needs ptrace permission (or run as root).
set -euo pipefail
out="${1:-results/profile}"
shift || true
mkdir -p "$out"
hes-mpi data fetch mnist >&2
export HES_MPI_PROFILE_DIR="$out"
mpiexec -n 2 sh -c 'exec py-spy record -r 250 -f raw -o "$HES_MPI_PROFILE_DIR/rank${PMI_RANK:-0}.txt" -- \
    python3 -m hes_mpi train --algo hes --epochs 5 --no-eval-train "$@"' sh "$@"
python3 -c "
import sys
from hes_mpi.post.benchtables import profile_markdown, profile_table
open(sys.argv[2], 'w').write(profile_markdown(profile_table(open(sys.argv[1]).read())) + '\n')" \
    "$out/rank0.txt" "$out/profile.md"
cat "$out/profile.md"
