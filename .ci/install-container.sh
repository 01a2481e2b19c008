#!/usr/bin/env bash
# Install podman, buildah, debootstrap and runc from Debian's packages, for tests/test_container.py (which
# builds the image with docker/build.sh). Idempotent: does nothing when everything is there. Needs root (or sudo).
set -euo pipefail
packages=(podman buildah debootstrap runc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "== container tools already installed: $(podman --version 2>/dev/null || echo '?')"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "== installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
echo "== $(podman --version)"
