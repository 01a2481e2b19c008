#!/usr/bin/env bash
# Install a one-node Slurm (slurmctld, slurmd, the client commands) and MUNGE from Debian's packages, for
# tests/test_slurm.py (hes_mpi/cluster/slurm.py starts and stops the daemons itself; nothing is enabled or
# started here). Idempotent: does nothing when everything is already installed. Needs root (or sudo).
set -euo pipefail
packages=(slurmctld slurmd slurm-client munge)
# shellcheck source=.ci/debs.sh
. "$(dirname "$0")/debs.sh"
mapfile -t missing < <(missing_debs "${packages[@]}")
if [ "${#missing[@]}" -eq 0 ]; then
    echo "== Slurm already installed: $(slurmctld -V 2>/dev/null || echo '?')"
    exit 0
fi
echo "== installing ${missing[*]}"
$as_root apt-get update -qq
# policy-rc.d: do not let the packages' maintainer scripts start munge/slurm services (the tests start
# their own daemons with their own configuration); removed again afterwards unless it was already there.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $as_root tee "$policy" >/dev/null
    $as_root chmod +x "$policy"
    created_policy=1
fi
remove_policy() { if [ "$created_policy" = 1 ]; then $as_root rm -f "$policy"; fi; }
trap remove_policy EXIT
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "== $(slurmctld -V)"
