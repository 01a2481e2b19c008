# Sourced by .ci/install-*.sh: which Debian packages are missing, and how to run apt as root.
# missing_debs PKG...  prints the packages of PKG... that dpkg does not have installed, one per line.
missing_debs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}
# "sudo" when not root, else nothing.
as_root=""
if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
