#!/usr/bin/env bash
# Both backends of the collectives, petrel's own and MPI's, on the same data in real
# jobs started by mpirun (tests/coll/mpi_coll.c):
#   1. without mpirun: the MPI backend is refused with a message that says so
#   2. mpirun -np 2 and -np 3: every collective with both backends, results identical
#      and exact
#   3. mpirun -np 2 with petrel ranks that are not the MPI ranks: refused on every rank
# Exits 77 (skipped) when the program was not built (a build without MPI's headers)
# or mpirun is not installed.
set -u
prog=${1:-}
if [[ -z $prog || ! -x $prog ]]; then
    echo "skip - no petrel_mpi_coll: built without MPI (install libopenmpi-dev and rebuild)"
    exit 77
fi
if ! command -v mpirun >/dev/null 2>&1; then
    echo "skip - mpirun is not installed (apt-get install openmpi-bin)"
    exit 77
fi
. "$(dirname "${BASH_SOURCE[0]}")/../tap.sh"

# check NAME RC NP: the run exited 0, and each of its NP processes ended with
# "N passed, 0 failed".
check() {
    local name=$1 rc=$2 np=$3 done_
    done_=$(grep -c ' passed, 0 failed$' "$tmp/out")
    if [[ $rc -ne 0 || $done_ -ne $np ]] || grep -q 'FAIL - ' "$tmp/out"; then
        fail "$name" "exit $rc, $done_ of $np processes passed: $(grep 'FAIL - ' "$tmp/out" |
            head -c 1500) $(tail -c 1500 "$tmp/err")"
        return
    fi
    ok "$name"
}

# ---- 1. without mpirun ---------------------------------------------------------------
env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u PMI_RANK timeout -k 5 60 "$prog" --no-mpirun \
    >"$tmp/out" 2>"$tmp/err"
check "without mpirun, the MPI backend is refused" $? 1

# ---- 2 and 3. mpirun -----------------------------------------------------------------
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# job NP ARGS...: one mpirun job of NP processes; output in $tmp/out and $tmp/err.
job() {
    local np=$1 rc port attempt
    shift
    for attempt in 1 2 3; do
        port=$(free_port)
        PETREL_SERVERS=0 PETREL_COORDINATOR=127.0.0.1:$port PETREL_TOKEN=mpi-coll-$$ \
            PETREL_JOB_ID=mpi-coll-$$-$np-$attempt \
            timeout -k 5 240 mpirun --oversubscribe --bind-to none --tag-output -np "$np" \
            -x PETREL_SERVERS -x PETREL_COORDINATOR -x PETREL_TOKEN -x PETREL_JOB_ID \
            "$prog" "$@" >"$tmp/out" 2>"$tmp/err"
        rc=$?
        [[ $rc -ne 0 ]] && grep -qi "in use" "$tmp/err" && continue
        break
    done
    return "$rc"
}

for np in 2 3; do
    job "$np"
    check "mpirun -np $np: both backends, every collective, identical and exact" $? "$np"
done

job 2 --permuted
check "mpirun -np 2, petrel ranks not MPI ranks: the MPI backend is refused" $? 2

tap_done
