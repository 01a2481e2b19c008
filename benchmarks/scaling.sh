#!/usr/bin/env bash
# The scaling table of benchmarks/README.md: 'hes-mpi bench steps' (default H-ES, MNIST, 784-300-10) on
# 1, 2 and 4 ranks, strong (global batch 1000) and weak (500 rows per rank), then a Markdown table.
# Ranks beyond the machine's cores are oversubscribed (one BLAS thread each).
# Usage: bash benchmarks/scaling.sh [OUT.jsonl] [extra bench options, e.g. --plain or --reps 20]
set -euo pipefail
out="${1:-results/scaling.jsonl}"
shift || true
mkdir -p "$(dirname "$out")"
: > "$out"
hes-mpi data fetch mnist >&2
for p in 1 2 4; do
    for mode in strong weak; do
        batch=1000
        [[ "$mode" == weak ]] && batch=$((500 * p))
        echo "== $mode scaling, $p ranks, global batch $batch" >&2
        mpiexec -n "$p" hes-mpi bench steps --batch "$batch" "$@" \
            | python3 -c "import json, sys; r = json.loads(sys.stdin.read()); r['scaling'] = '$mode'; print(json.dumps(r))" >> "$out"
    done
done
python3 "$(dirname "$0")/scaling_table.py" "$out"
