#!/usr/bin/env bash
# hes-mpi simulate against the emulated cluster (docs/results.md): on 2, 3 and 4 nodes at 1 Gbit/s and
# 100 Mbit/s, BGD, H-ES r = 2, local SGD H = 4 and PowerSGD rank 4 ('train --data mnist --epochs 3'); each
# run log then replayed on a star of the same link rate, the latency the one measured with 'bench osu' (the
# 4-byte allreduce on 2 nodes: one exchange, node to node), SMPI's factors 1 (pure latency-bandwidth).
# Prints the validation table (measured against replayed per step kind and epoch). Needs root and
# libsimgrid-dev; cleans up its clusters. 4 nodes on this 2-core host share its cores: their measured compute
# is what is replayed, so what is tested is the network part.
# Usage: sudo bash benchmarks/simulate_validation.sh [OUT_DIR (default results/simulate-validation)]
#        REPLAY_ONLY=1 ... replays the run logs OUT_DIR already holds (no cluster, no training).
set -euo pipefail
out="${1:-results/simulate-validation}"
mkdir -p "$out"
hes="python -m hes_mpi"
$hes data fetch mnist >&2
: > "$out/rows.jsonl"
for rate in 1gbit 100mbit; do
    for nodes in 2 3 4; do
        name="val$nodes"
        replay_only="${REPLAY_ONLY:-0}"
        if [ "$replay_only" != 1 ]; then
            $hes cluster up --name "$name" --nodes "$nodes" --link "$rate" >&2
            trap '$hes cluster down --name "$name" >&2' EXIT
        fi
        if [ "$nodes" = 2 ] && [ "$replay_only" != 1 ]; then
            $hes cluster run --name "$name" -- bench osu --op allreduce --min-size 4 --max-size 4 --json |
                python3 -c "import json, sys; print(round(json.load(sys.stdin)['rows'][0]['avg_us'], 1))" \
                > "$out/latency_$rate.us"
        fi
        lat_us=$(cat "$out/latency_$rate.us")
        echo "== $rate: 4-byte allreduce on 2 nodes: ${lat_us} us" >&2
        for spec in "bgd:--algo bgd" "hes_r2:--algo hes --r 2" "localsgd_h4:--algo localsgd --r 4" \
                    "powersgd4:--algo bgd --compress powersgd:4"; do
            run="${spec%%:*}"
            read -r -a opts <<< "${spec#*:}"
            log="$out/${run}_${nodes}n_${rate}.h5"
            [ "$replay_only" = 1 ] || $hes cluster run --name "$name" -- train --data mnist --epochs 3 --lr 5 --no-eval-train "${opts[@]}" \
                --out "$log" --force >&2
            $hes simulate "$log" --nodes "$nodes" --platform "star:$rate,${lat_us}us" --smpi-factors 1 --json \
                >> "$out/rows.jsonl"
        done
        if [ "$replay_only" != 1 ]; then
            $hes cluster down --name "$name" >&2
            trap - EXIT
        fi
    done
done
python3 -c "import json, sys
from hes_mpi.post.simulate import validation_markdown
print(validation_markdown([json.loads(l) for l in open(sys.argv[1])]), end='')" "$out/rows.jsonl" | tee "$out/validation.md"
