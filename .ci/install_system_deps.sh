#!/usr/bin/env bash
# System packages the tests need: make (for `make test`), munge + slurm-wlm (a live one-node SLURM for
# tests/integration/distributed/test_cluster.py and tests/unit/distributed/test_launch.py) and OpenMPI (mpirun). `make test` runs this first.
# Quick and idempotent: when every binary below is on PATH it does nothing. Otherwise, as root, it installs the
# missing Debian/Ubuntu packages with apt-get; without root it prints the one command to run and exits 1.
set -euo pipefail

BINARIES=(make munged mungekey slurmctld slurmd sbatch squeue scontrol sacct mpirun)
PACKAGES=(make munge slurm-wlm openmpi-bin libopenmpi-dev)
SELF="bash .ci/install_system_deps.sh"

missing_binaries=()
for binary in "${BINARIES[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || missing_binaries+=("$binary")
done
if [ ${#missing_binaries[@]} -eq 0 ]; then
    exit 0
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: missing ${missing_binaries[*]}; this is not a Debian/Ubuntu system:" \
         "install the packages that provide them (SLURM with munge, OpenMPI), then rerun" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: ${PACKAGES[*]} are installed but ${missing_binaries[*]} not on PATH ($PATH)" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_deps: the tests need ${missing[*]} (missing: ${missing_binaries[*]}); run as root:" >&2
    echo "    sudo $SELF" >&2
    exit 1
fi

echo "install_system_deps: installing ${missing[*]}"
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }; then
    echo "install_system_deps: apt-get could not install ${missing[*]} (see above); install them, then rerun" >&2
    exit 1
fi
