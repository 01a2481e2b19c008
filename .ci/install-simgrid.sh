#!/usr/bin/env bash
# Install SimGrid's SMPI (smpirun, smpireplaymain) from Debian's libsimgrid-dev (SimGrid 3.32 on Debian 12),
# for hes-mpi simulate and tests/test_simulate.py. Idempotent: does nothing when it is already installed.
# Needs root (or sudo).
set -euo pipefail
packages=(libsimgrid-dev)
# shellcheck source=.ci/debs.sh
. "$(dirname "$0")/debs.sh"
mapfile -t missing < <(missing_debs "${packages[@]}")
if [ "${#missing[@]}" -eq 0 ]; then
    echo "== SimGrid already installed: $(smpirun -version 2>/dev/null | head -1 || echo '?')"
    exit 0
fi
echo "== installing ${missing[*]}"
$as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "== $(smpirun -version | head -1)"
