# Shared by the shell tests (sourced): a scratch directory $tmp removed on exit,
# TAP-style "ok - NAME" / "FAIL - NAME (why)" lines and their counts, and the
# summary line that ends every test.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

ok() { echo "ok - $1"; passed=$((passed + 1)); }
fail() { echo "FAIL - $1 ($2)"; failed=$((failed + 1)); }

# expect_rc NAME WANT_RC COMMAND...: runs the command (at most 120 s) with its
# output in $tmp/out and $tmp/err, and checks its exit code.
expect_rc() {
    local name=$1 want=$2; shift 2
    timeout 120 "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [[ $rc -eq $want ]]; then ok "$name"; else fail "$name" "exit $rc, expected $want: $(tail -c 400 "$tmp/err")"; fi
}

# Prints "N passed, N failed" and exits 1 if any failed, else with $1 (0).
tap_done() { echo "$passed passed, $failed failed"; [[ $failed -eq 0 ]] || exit 1; exit "${1:-0}"; }

# A port below the kernel's ephemeral range (usually 32768..60999), so no outgoing
# connection holds it; the callers retry with another one when it is taken anyway.
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 12000))
        if command -v ss >/dev/null 2>&1; then
            ss -Htln "sport = :$p" 2>/dev/null | grep -q . && continue
        fi
        echo "$p"
        return
    done
    echo $((20000 + RANDOM % 12000))
}
