#!/usr/bin/env bash
# Installs the Debian packages petrel needs, if any are missing.
#   scripts/deps.sh          build, test and run: compiler, CMake, OpenBLAS, zlib, Fashion-MNIST,
#                            mpirun and ip (for the net tests that start real jobs), WordNet and
#                            fortunes (text corpora for petrel data text2libsvm, docs/text.md)
#   scripts/deps.sh --bench  also the benchmark references (PyTorch and the BLAS it needs; Open
#                            MPI's headers and mpirun for bench/mpi_allreduce.c; liblinear's
#                            train and predict programs for petrel bench hogwild)
# As root it runs apt-get; otherwise it prints the exact command to run and fails.
set -euo pipefail

packages=(gcc make cmake pkg-config libopenblas-dev zlib1g-dev dataset-fashion-mnist
          openmpi-bin iproute2 wordnet-base fortunes-min)
if [[ "${1:-}" == "--bench" ]]; then
    packages=(python3-torch libopenblas0 python3-numpy libopenmpi-dev openmpi-bin liblinear-tools)
fi

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    echo "petrel: missing Debian packages: ${missing[*]}" >&2
    echo "run as root: apt-get update && $cmd" >&2
    exit 1
fi
echo "petrel: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
