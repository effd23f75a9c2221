#!/usr/bin/env bash
# System packages for CI: make (for `make test`), and for the cluster tests (tests/test_cluster.py,
# tests/test_launch.py) munge + slurm-wlm for a live one-node SLURM, OpenMPI for mpirun. Idempotent: apt runs only
# when one of them is missing. Needs root (CI runs as root); without root it prints what to install.
set -euo pipefail

PACKAGES=(make munge slurm-wlm openmpi-bin libopenmpi-dev)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: ${PACKAGES[*]} already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_deps: missing ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
    exit 1
fi

echo "install_system_deps: installing ${missing[*]}"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
