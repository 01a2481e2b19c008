#!/usr/bin/env bash
# Run the hes_mpi image with ulimits this host allows: `podman run` (or `docker run`) with every argument
# passed on unchanged, after two options:
#
#   --ulimit nofile=N:N   N: this shell's hard limit of open files (ulimit -Hn), at most 1048576
#   --ulimit nproc=M:M    M: its hard limit of processes (ulimit -Hu), at most 32768
#
# Unless told otherwise, podman gives a rootful container 1048576 open files and processes. Where root may not
# raise its limits past the host's hard ones (a host that is itself a container, or lacks CAP_SYS_RESOURCE),
# runc then fails with "error setting rlimit type 7: operation not permitted" (type 6 for the processes);
# podman 4 also lowers its own process limit to 32768 before it starts a container, and a container may not
# have more. --ulimit options of your own, given after these, win.
#
#   sudo bash docker/run.sh [podman|docker] [RUN OPTIONS] IMAGE [COMMAND ...]
#   sudo bash docker/run.sh --rm localhost/hes_mpi --help
#   sudo bash docker/run.sh --rm --shm-size=256m --entrypoint mpiexec localhost/hes_mpi -n 2 hes-mpi train
#
# The first word may name the engine; the default is podman where it is installed, else docker.
# Exit status: the engine's; 2 when no engine is installed.
set -euo pipefail

die() { echo "docker/run.sh: error: $*" >&2; exit 2; }

engine=""
case "${1:-}" in
    podman | docker) engine="$1"; shift ;;
esac
if [ -z "$engine" ]; then
    for candidate in podman docker; do
        if command -v "$candidate" > /dev/null; then engine="$candidate"; break; fi
    done
    [ -n "$engine" ] || die "neither podman nor docker is installed"
fi
command -v "$engine" > /dev/null || die "$engine is not installed"

# the hard limit $1 (a number or 'unlimited'), at most $2
capped() { if [ "$1" = unlimited ] || [ "$1" -gt "$2" ]; then echo "$2"; else echo "$1"; fi; }
nofile="$(capped "$(ulimit -Hn)" 1048576)"
nproc="$(capped "$(ulimit -Hu)" 32768)"

exec "$engine" run --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" "$@"
