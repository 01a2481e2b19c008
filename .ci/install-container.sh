#!/usr/bin/env bash
# Install podman, buildah, debootstrap and runc from Debian's packages, for tests/test_container.py (which
# builds the image with docker/build.sh). Idempotent: does nothing when everything is there. Needs root (or sudo).
set -euo pipefail
packages=(podman buildah debootstrap runc)
# shellcheck source=.ci/debs.sh
. "$(dirname "$0")/debs.sh"
mapfile -t missing < <(missing_debs "${packages[@]}")
if [ "${#missing[@]}" -eq 0 ]; then
    echo "== container tools already installed: $(podman --version 2>/dev/null || echo '?')"
    exit 0
fi
echo "== installing ${missing[*]}"
$as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
echo "== $(podman --version)"
