#!/usr/bin/env bash
# Runs CTest in a build directory (extra arguments go to ctest, e.g. -L unit) and
# ends with one line "N passed, N failed, N skipped". Exits non-zero on any failure.
set -uo pipefail
build=${1:?usage: scripts/run-tests.sh BUILD_DIR [ctest args]}
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd "$build" && ctest --output-on-failure --timeout 900 -j "$(nproc 2>/dev/null || echo 2)" "$@") 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$log" | tail -1)
failed=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of.*/\1/p' "$log" | tail -1)
skipped=$(grep -c '(Skipped)' "$log" || true)
total=${total:-0}
failed=${failed:-0}
if [[ $total -eq 0 ]]; then
    echo "0 passed, 1 failed (no test ran)"
    exit 1
fi
echo "$((total - failed - skipped)) passed, $failed failed, $skipped skipped"
exit "$rc"
