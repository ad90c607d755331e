#!/usr/bin/env bash
# A multi-host job on one machine: network namespaces stand in for hosts.
#
#   namespace      address        nodes
#   <p>-h0         10.77.0.1/24   rank 0, the coordinator
#   <p>-h1         10.77.0.2/24   rank 1, the server
#   <p>-h2         10.77.0.3/24   ranks 2 and 3, the workers (one "host": shared memory)
#   <p>-hub        -              the bridge br0 that joins the three veth pairs
#
# Nothing is added to the namespace the test runs in: the bridge lives in a
# namespace of its own, and every namespace (and with it every veth and the
# bridge) is deleted on exit, however the test ends. Each node is started with
# `ip netns exec`, PETREL_INTERFACE set to its namespace's address and
# PETREL_COORDINATOR=10.77.0.1:PORT, and runs under `timeout`.
# Exits 77 (skipped) when namespaces cannot be made: not root, no `ip`, no permission.
set -u
smoke=${1:?usage: netns_test.sh PATH_TO_PETREL_JOB_SMOKE}
skip() { echo "skip - $1"; exit 77; }

[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces"
command -v ip >/dev/null 2>&1 || skip "no 'ip' command (apt-get install iproute2)"
command -v timeout >/dev/null 2>&1 || skip "no 'timeout' command"

p=petrel$$
spaces=("$p-h0" "$p-h1" "$p-h2" "$p-hub")
tmp=$(mktemp -d)
pids=()
cleanup() {
    local pid ns
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in "${spaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$p-hub" 2>"$tmp/err" || skip "cannot create a network namespace: $(cat "$tmp/err")"
ip -n "$p-hub" link add br0 type bridge 2>"$tmp/err" ||
    skip "cannot create a bridge in a namespace: $(cat "$tmp/err")"
ip -n "$p-hub" link set br0 up
for i in 0 1 2; do
    ns=$p-h$i
    { ip netns add "$ns" &&
        ip -n "$p-hub" link add "v$i" type veth peer name eth0 netns "$ns" &&
        ip -n "$p-hub" link set "v$i" master br0 &&
        ip -n "$p-hub" link set "v$i" up &&
        ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev eth0 &&
        ip -n "$ns" link set eth0 up &&
        ip -n "$ns" link set lo up; } 2>"$tmp/err" ||
        skip "cannot set up namespace $ns: $(cat "$tmp/err")"
done
# The bridge forwards once its ports are up; wait for that with a bounded ping.
if command -v ping >/dev/null 2>&1; then
    for i in 1 2; do
        reached=0
        for _ in $(seq 1 20); do
            ip netns exec "$p-h$i" ping -c1 -W1 10.77.0.1 >/dev/null 2>&1 && { reached=1; break; }
        done
        [[ $reached -eq 1 ]] || { echo "FAIL - 10.77.0.$((i + 1)) cannot reach 10.77.0.1"; exit 1; }
    done
fi

passed=0 failed=0
ok() { echo "ok - $1"; passed=$((passed + 1)); }
fail() { echo "FAIL - $1 ($2)"; failed=$((failed + 1)); }

token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
port=29999
host_of=(0 1 2 2)
for r in 0 1 2 3; do
    h=${host_of[$r]}
    ip netns exec "$p-h$h" env PETREL_RANK=$r PETREL_SIZE=4 PETREL_SERVERS=1 \
        PETREL_INTERFACE=10.77.0.$((h + 1)) PETREL_COORDINATOR=10.77.0.1:$port \
        PETREL_TOKEN="$token" PETREL_JOB_ID="netns-$p" \
        timeout -k 5 60 "$smoke" >"$tmp/out.$r" 2>"$tmp/err.$r" &
    pids+=($!)
done
for r in 0 1 2 3; do
    wait "${pids[$r]}"
    rc=$?
    if [[ $rc -eq 0 ]] && grep -q "rank $r ok" "$tmp/out.$r"; then
        ok "rank $r in $p-h${host_of[$r]} (10.77.0.$((${host_of[$r]} + 1)))"
    else
        fail "rank $r" "exit $rc: $(tail -c 4000 "$tmp/err.$r") $(tail -c 300 "$tmp/out.$r")"
    fi
done
pids=()
# Across namespaces the nodes talk TCP; the two workers that share one share memory.
grep -q "link to rank 0: tcp" "$tmp/out.2" && ok "worker to coordinator over tcp" ||
    fail "worker to coordinator over tcp" "$(head -c 300 "$tmp/out.2")"
grep -q "links: .*3:shm" "$tmp/out.2" && ok "workers on one host over shm" ||
    fail "workers on one host over shm" "$(head -c 300 "$tmp/out.2")"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
