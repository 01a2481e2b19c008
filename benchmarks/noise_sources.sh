#!/usr/bin/env bash
# The noise sources side by side (docs/measurement.md, "Time split and memory"): `bench steps` (MNIST, the
# poster's network, 2 ranks, H-ES r = 2) with `--noise table|philox|counter` and `--perturb output|all`, the
# sources interleaved within each round, then the median over the rounds of the ES step over the gradient step
# and of the noise share; and the memory each holds: the method state (telemetry.held_bytes of the algorithm)
# and the noise source's part of it (held_bytes(algo, noise.Perturbations)), per rank, built as training
# builds them (rows per rank up to the global batch, as trainer.py sizes them).
# Usage: bash benchmarks/noise_sources.sh [OUTDIR] [ROUNDS] [REPS]
set -euo pipefail
out="${1:-results/noise_sources}"
rounds="${2:-3}"
reps="${3:-30}"
mkdir -p "$out"
hes-mpi data fetch mnist >&2
for round in $(seq 1 "$rounds"); do
    for mode in output all; do
        for src in table philox counter; do
            echo "== round $round/$rounds: --perturb $mode --noise $src" >&2
            mpiexec -n 2 hes-mpi bench steps --reps "$reps" --noise "$src" --perturb "$mode" \
                > "$out/${mode}_${src}_round${round}.json" < /dev/null
        done
    done
done
mpiexec -n 2 python3 -c "
import glob, json, sys
import numpy as np
from hes_mpi import noise
from hes_mpi.algorithms import make_algorithm
from hes_mpi.comm import InstrumentedComm
from hes_mpi.config import RunConfig
from hes_mpi.model import MLP
from hes_mpi.telemetry import held_bytes
comm = InstrumentedComm()
m = MLP(784, 300, 10)
bgd = held_bytes(make_algorithm(RunConfig(algo='bgd').validate(), m, comm, 1000, 1000))
if comm.rank == 0:
    print(f'BGD holds {bgd / 1e6:.2f} MB per rank')
    print('| --perturb | --noise | ES step / gradient step | noise share | ES step (ms) | method state (MB) | of it noise (MB) | state / BGD |')
    print('|---|---|---|---|---|---|---|---|')
for mode in ('output', 'all'):
    for src in ('table', 'philox', 'counter'):
        algo = make_algorithm(RunConfig(algo='hes', r=2, perturb=mode, noise=src).validate(), m, comm, 1000, 1000)
        state, held = held_bytes(algo), held_bytes(algo, noise.Perturbations)
        runs = [json.load(open(f)) for f in sorted(glob.glob(f'{sys.argv[1]}/{mode}_{src}_round*.json'))]
        med = lambda k: float(np.median([r[k] for r in runs]))
        span = lambda k: f'{min(r[k] for r in runs):.3g}-{max(r[k] for r in runs):.3g}'
        if comm.rank == 0:
            print(f'| {mode} | {src} | {med(\"es_over_grad_step\"):.3f} ({span(\"es_over_grad_step\")}) | '
                  f'{med(\"noise_share\"):.4f} ({span(\"noise_share\")}) | {1e3 * med(\"median_es_step_s\"):.2f} | '
                  f'{state / 1e6:.2f} | {held / 1e6:.2f} | {state / bgd:.2f} |')
" "$out"
