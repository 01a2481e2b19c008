#!/usr/bin/env bash
# The Runtime column of the results (docs/results.md): short training runs of each configuration (MNIST, 2 ranks,
# 5 epochs, no per-epoch pass over the training set), in interleaved rounds, then each configuration's
# median training time relative to BGD's. Interleaving keeps a slow spell of a shared machine from
# landing on one configuration only (whole 30-epoch runs one after the other varied by 2x here).
# SET picks the configurations: poster (default: BGD and H-ES, plain and with its methods) or baselines (BGD,
# fp16, top-k 25%, PowerSGD rank 4, local SGD H = 4, H-ES r = 2 and its control: the one-host time of the
# compressed exchanges, at lr 5).
# Usage: bash benchmarks/runtime.sh [OUTDIR] [ROUNDS] [SET]
set -euo pipefail
out="${1:-results/runtime}"
rounds="${2:-3}"
set_name="${3:-poster}"
mkdir -p "$out"
hes-mpi data fetch mnist >&2
case "$set_name" in
    poster) configs=(
        "bgd|--algo bgd"
        "assisted_plain|--algo hes --assisted --plain"
        "r2_plain|--algo hes --r 2 --plain"
        "r3_plain|--algo hes --r 3 --plain"
        "assisted|--algo hes --assisted"
        "r2|--algo hes --r 2"
        "r3|--algo hes --r 3"
    ) ;;
    baselines) configs=(
        "bgd|--algo bgd --lr 5"
        "fp16|--algo bgd --compress fp16 --lr 5"
        "topk25|--algo bgd --compress topk:0.25 --lr 5"
        "powersgd4|--algo bgd --compress powersgd:4 --lr 5"
        "localsgd4|--algo localsgd --r 4 --lr 5"
        "hes_r2|--algo hes --r 2 --lr 5"
        "reuse_r2|--algo reuse --r 2 --lr 5"
    ) ;;
    *) echo "runtime.sh: error: SET is poster or baselines, not $set_name" >&2; exit 2 ;;
esac
for round in $(seq 1 "$rounds"); do
    for c in "${configs[@]}"; do
        name="${c%%|*}"
        read -r -a opts <<<"${c#*|}"
        echo "== round $round/$rounds: $name" >&2
        mpiexec -n 2 hes-mpi train "${opts[@]}" --epochs 5 --no-eval-train --force \
            --out "$out/${name}_round${round}.h5" > /dev/null < /dev/null
    done
done
python3 -c "
import glob, sys
from hes_mpi.post.benchtables import runtime_markdown
print(runtime_markdown(sorted(glob.glob(sys.argv[1] + '/*_round*.h5'))))" "$out"
