#!/usr/bin/env bash
# Build the hes_mpi image with podman on a Debian host, with no image registry: a local base image made with
# debootstrap, then docker/Dockerfile on top of it, then smoke runs. Idempotent: an existing base image is
# reused (HES_MPI_REBUILD_BASE=1 makes it again), the image is rebuilt from the committed tree.
#
#   sudo bash docker/build.sh [TAG]          # default TAG: localhost/hes_mpi:latest
#
# Environment (optional):
#   HES_MPI_BASE          the base image's name (default localhost/hes_mpi-base:bookworm)
#   HES_MPI_REBUILD_BASE  1: debootstrap the base again even when it exists
#   HES_MPI_MIRROR        the Debian mirror for debootstrap (default: the first of this host's apt sources)
#   HES_MPI_SMOKE         0: skip the smoke runs
#   HES_MPI_WORK          a folder for the temporary files (default: a new one under /tmp, removed at exit)
# Needs root, podman, debootstrap and runc (Debian: apt-get install podman buildah debootstrap runc).
set -euo pipefail

tag="${1:-localhost/hes_mpi:latest}"
base="${HES_MPI_BASE:-localhost/hes_mpi-base:bookworm}"
repo="$(cd "$(dirname "$0")/.." && pwd)"

die() { echo "docker/build.sh: error: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "needs root (podman here runs rootful; debootstrap needs root): run it with sudo"
for tool in podman debootstrap runc git; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install podman buildah debootstrap runc git)"
done

work="${HES_MPI_WORK:-}"
if [ -z "$work" ]; then
    work="$(mktemp -d /tmp/hes_mpi-build.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

# podman's configuration for this build only (the host's /etc/containers is left alone): runc (crun
# rejects hybrid cgroup layouts), and ulimits no higher than this host's hard limits (root in a container
# may not raise its own).
# (conmon runs with at most 32768 processes here, whatever the shell's limit: higher fails in runc.)
nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
cat > "$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# ---------------------------------------------------------------------------------------------- base image
if [ "${HES_MPI_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$base"; then
    mirror="${HES_MPI_MIRROR:-}"
    if [ -z "$mirror" ]; then
        mirror="$({ grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ \
                    2>/dev/null || true; } | { grep -v -e security -e nodesource -e google || true; } \
                  | head -1 | awk '{print $2}')"
        mirror="${mirror:-http://deb.debian.org/debian}"
    fi
    echo "== base image $base: debootstrap bookworm (minbase, Python 3.11) from $mirror"
    start=$(date +%s)
    rootfs="$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    # the host's apt sources (the same mirror and suites), so apt-get works inside the image
    rm -f "$rootfs/etc/apt/sources.list"
    mkdir -p "$rootfs/etc/apt/sources.list.d"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        if [ -f "$f" ]; then cp "$f" "$rootfs${f}"; fi
    done
    # python and pip first on PATH, as in the official python image (and pip may install as root there)
    chroot "$rootfs" /usr/bin/python3 -m venv /opt/venv
    rm -rf "$rootfs/var/cache/apt"/* "$rootfs/var/lib/apt/lists"/*
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$base" > /dev/null
    rm -rf "$rootfs"
    echo "== base image made in $(( $(date +%s) - start )) s: $(( $(podman image inspect "$base" --format '{{.Size}}') / 1000000 )) MB"
else
    echo "== base image $base: present (HES_MPI_REBUILD_BASE=1 makes it again)"
fi

# ---------------------------------------------------------------------------------------------- the image
echo "== image $tag from docker/Dockerfile (the committed tree: git archive HEAD)"
context="$work/context"
rm -rf "$context"; mkdir -p "$context"
git -C "$repo" archive HEAD | tar -x -C "$context"
ca=/etc/ssl/certs/ca-certificates.crt
volumes=()
[ -f "$ca" ] && volumes=(-v "$ca:$ca:ro")  # pip behind a TLS-inspecting proxy trusts what this host trusts
start=$(date +%s)
podman build --pull=never --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
    --build-arg "BASE=$base" "${volumes[@]}" -f "$context/docker/Dockerfile" -t "$tag" \
    "$context" > "$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; die "podman build failed (log above)"; }
size="$(podman image inspect "$tag" --format '{{.Size}}')"
echo "== built $tag in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB"

# ---------------------------------------------------------------------------------------------- smoke runs
if [ "${HES_MPI_SMOKE:-1}" != 0 ]; then
    # as docker/README.md runs the image: docker/run.sh, podman run with ulimits this host allows
    run() { echo "+ bash docker/run.sh podman --rm $*"; bash "$repo/docker/run.sh" podman --rm "$@"; }
    run "$tag" --help | head -3
    run "$tag" data list --verify
    run "$tag" train --data synthetic --epochs 2
    run --shm-size=256m --entrypoint mpiexec "$tag" -n 2 hes-mpi train --data synthetic --epochs 2
    echo "== smoke runs passed"
fi
