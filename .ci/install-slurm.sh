#!/usr/bin/env bash
# Install a one-node Slurm (slurmctld, slurmd, the client commands) and MUNGE from Debian's packages, for
# tests/test_slurm.py (hes_mpi/cluster/slurm.py starts and stops the daemons itself; nothing is enabled or
# started here). Idempotent: does nothing when everything is already installed. Needs root (or sudo).
set -euo pipefail
packages=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "== Slurm already installed: $(slurmctld -V 2>/dev/null || echo '?')"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "== installing ${missing[*]}"
$sudo apt-get update -qq
# policy-rc.d: do not let the packages' maintainer scripts start munge/slurm services (the tests start
# their own daemons with their own configuration); removed again afterwards unless it was already there.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created_policy=1
fi
remove_policy() { if [ "$created_policy" = 1 ]; then $sudo rm -f "$policy"; fi; }
trap remove_policy EXIT
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "== $(slurmctld -V)"
