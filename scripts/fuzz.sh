#!/usr/bin/env bash
# Fuzzes the net module's readers of peer bytes (tests/fuzz/fuzz_wire.c, docs/fuzz.md)
# with libFuzzer under AddressSanitizer and UndefinedBehaviorSanitizer, for SECONDS.
#
#   scripts/fuzz.sh [SECONDS]     default 60
#
# Builds BUILD/fuzz_wire with clang (CLANG=..., default clang-14 or clang), writes the
# seed corpus of valid frames (BUILD/seeds), fuzzes into BUILD/corpus (kept between
# runs), and prints the number of executions. Exits non-zero when the build fails or
# an input crashes, leaks, hangs or trips a check; the input is saved as
# BUILD/artifacts/crash-* (replay: BUILD/fuzz_wire BUILD/artifacts/crash-...).
# BUILD is $FUZZ_BUILD, default build-fuzz.
set -euo pipefail

secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]] || [[ $secs -lt 1 ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS]" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
cc=${CLANG:-$(command -v clang-14 || command -v clang || true)}
if [[ -z $cc ]]; then
    echo "fuzz.sh: error: clang not found" >&2
    echo "hint: apt-get install clang-14 (libFuzzer comes with it), or set CLANG" >&2
    exit 1
fi
mkdir -p "$build/corpus" "$build/seeds" "$build/artifacts"

# The net module and the core it needs; tests/fuzz/fuzz_wire.c brings its own
# exact-size allocator in place of src/core/alloc.c (see the top of that file).
sources=("$root/tests/fuzz/fuzz_wire.c" "$root"/src/net/*.c)
for f in "$root"/src/core/*.c; do
    [[ $(basename "$f") == alloc.c ]] || sources+=("$f")
done
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla
       -Wformat=2 -I"$root/include" -I"$root/src" -I"$root/src/net")
echo "fuzz.sh: building $build/fuzz_wire with $cc"
"$cc" "${flags[@]}" "${sources[@]}" -o "$build/fuzz_wire" -lpthread -lm

PETREL_FUZZ_WRITE_SEEDS="$build/seeds" "$build/fuzz_wire"
echo "fuzz.sh: $(ls "$build/seeds" | wc -l) seeds, $(ls "$build/corpus" | wc -l) inputs in the corpus; fuzzing for $secs s"

# -close_fd_mask=2: the node logs every dropped link to stderr; libFuzzer and the
# sanitizers keep reporting on a copy of it.
log="$build/fuzz.log"
set +e
"$build/fuzz_wire" -max_total_time="$secs" -timeout=30 -close_fd_mask=2 -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/" "$build/corpus" "$build/seeds" 2>&1 | tee "$log" |
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^==|ERROR|SUMMARY|crash-|leak-|timeout-|fuzz_wire:|^stat::|^Done'
rc=${PIPESTATUS[0]}
set -e
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
if [[ $rc -ne 0 ]]; then
    echo "fuzz.sh: FAILED after ${execs:-?} executions (exit $rc); log: $log"
    exit 1
fi
echo "fuzz.sh: ${execs:-?} executions in $secs s, no crash"
