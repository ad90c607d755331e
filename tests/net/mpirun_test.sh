#!/usr/bin/env bash
# Real jobs of petrel_job_smoke (1 coordinator, 1 server, 2 workers) started by
# the launchers petrel supports on one host:
#   1. petrel launch -w 2 -s 1 -- petrel_job_smoke (and the launch command line: help,
#      usage errors, the exit code of a failed node)
#   2. mpirun -np 4 with PETREL_COORDINATOR, PETREL_TOKEN and PETREL_JOB_ID chosen here
#   3. mpirun -np 4 with none of them: the coordinator address comes from Open MPI's
#      job id (petrel_job_env_default_coordinator)
# Exits 77 (skipped) after the first run when mpirun is not installed.
set -u
petrel=${1:?usage: mpirun_test.sh PATH_TO_PETREL PATH_TO_PETREL_JOB_SMOKE}
smoke=${2:?usage: mpirun_test.sh PATH_TO_PETREL PATH_TO_PETREL_JOB_SMOKE}
. "$(dirname "${BASH_SOURCE[0]}")/../tap.sh"

# check NAME RC: the run exited 0 and each of the 4 ranks said "rank R ok" with the
# right role (the rank rule with 1 server).
check() {
    local name=$1 rc=$2 r role
    if [[ $rc -ne 0 ]]; then
        fail "$name" "exit $rc: $(tail -c 1500 "$tmp/err")"
        return
    fi
    for r in 0 1 2 3; do
        case $r in 0) role=coordinator ;; 1) role=server ;; *) role=worker ;; esac
        if ! grep -q "rank $r of 4: $role" "$tmp/out" || ! grep -q "rank $r ok" "$tmp/out"; then
            fail "$name" "rank $r ($role) did not report: $(tail -c 1500 "$tmp/out")"
            return
        fi
    done
    ok "$name"
}

# ---- 1. petrel launch ------------------------------------------------------------
timeout -k 5 120 "$petrel" launch -w 2 -s 1 --timeout 90 --grace 2000 -- "$smoke" \
    >"$tmp/out" 2>"$tmp/err"
check "petrel launch -w 2 -s 1" $?
grep -q '^\[worker 1\] rank 3 ok' "$tmp/out" && ok "launch output is prefixed" ||
    fail "launch output is prefixed" "$(head -c 500 "$tmp/out")"

# The command line: help, usage errors (exit 2), the job's exit code passed on.
"$petrel" launch --help >"$tmp/help" 2>&1 && ok "launch --help exits 0" || fail "launch --help" "exit $?"
missing=""
for flag in --workers --servers --threads --interface --no-prefix --timeout --grace --help; do
    grep -q -- "$flag" "$tmp/help" || missing="$missing $flag"
done
[[ -z $missing ]] && grep -q '\[5000\]' "$tmp/help" && ok "launch --help lists every flag and default" ||
    fail "launch --help lists every flag and default" "missing:$missing"
"$petrel" --help | grep -q "launch" && ok "petrel --help lists launch" || fail "petrel --help lists launch" ""
for args in "-w 0 -- true" "-w 1" "--timeout x -- true" "--frobnicate -- true"; do
    # shellcheck disable=SC2086
    "$petrel" launch $args >/dev/null 2>"$tmp/uerr"
    rc=$?
    [[ $rc -eq 2 ]] && grep -q "petrel: error:" "$tmp/uerr" && ok "launch $args: usage error" ||
        fail "launch $args: usage error" "exit $rc: $(cat "$tmp/uerr")"
done
timeout -k 5 60 "$petrel" launch -w 2 --timeout 30 -- sh -c '[ "$PETREL_RANK" = 2 ] && exit 5; exit 0' \
    >/dev/null 2>"$tmp/err"
rc=$?
[[ $rc -eq 5 ]] && grep -q "worker 1 (rank 2) exited with status 5" "$tmp/err" &&
    ok "launch exits with the failed node's status" ||
    fail "launch exits with the failed node's status" "exit $rc: $(cat "$tmp/err")"

# ---- 2 and 3. mpirun ------------------------------------------------------------------
if ! command -v mpirun >/dev/null 2>&1; then
    echo "skip - mpirun is not installed (apt-get install openmpi-bin)"
    tap_done 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe --bind-to none -np 4)


token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
for attempt in 1 2 3; do
    port=$(free_port)
    PETREL_SERVERS=1 PETREL_COORDINATOR=127.0.0.1:$port PETREL_TOKEN=$token \
        PETREL_JOB_ID=mpirun-test-$$-$attempt \
        timeout -k 5 120 "${mpi[@]}" -x PETREL_SERVERS -x PETREL_COORDINATOR -x PETREL_TOKEN \
        -x PETREL_JOB_ID "$smoke" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [[ $rc -ne 0 ]] && grep -qi "in use" "$tmp/err" && continue
    break
done
check "mpirun -np 4 with PETREL_COORDINATOR=127.0.0.1:$port" $rc

# Without PETREL_COORDINATOR: every rank derives 127.0.0.1:(29500 + hash % 1000) from
# OMPI_MCA_ess_base_jobid, which differs per mpirun.
for attempt in 1 2 3; do
    PETREL_SERVERS=1 timeout -k 5 120 "${mpi[@]}" -x PETREL_SERVERS "$smoke" \
        >"$tmp/out" 2>"$tmp/err"
    rc=$?
    [[ $rc -ne 0 ]] && grep -qi "in use" "$tmp/err" && continue
    break
done
check "mpirun -np 4 with the default coordinator" $rc

# A node that fails makes mpirun fail: the smoke program with a bad rank variable.
PETREL_SERVERS=1 PETREL_RANK=9 PETREL_SIZE=4 timeout -k 5 60 "${mpi[@]}" -x PETREL_SERVERS \
    -x PETREL_RANK -x PETREL_SIZE "$smoke" >"$tmp/out" 2>"$tmp/err"
rc=$?
[[ $rc -ne 0 ]] && grep -q "PETREL_RANK='9'" "$tmp/err" && ok "a bad PETREL_RANK fails the job" ||
    fail "a bad PETREL_RANK fails the job" "exit $rc: $(tail -c 500 "$tmp/err")"
tap_done
