#!/usr/bin/env bash
# The SSP experiment (Ho et al., NIPS'13): matrix factorization and sparse logistic
# regression through the parameter server, 3 workers and 1 server, worker 0 a 2x
# straggler, for s = 0 (BSP), 1, 2, 4, 8 and async. Prints, per run, the wall time and
# the clocks until the smoothed training loss first reaches the target, and the final
# loss. docs/ps.md explains how to read it.
#
#   scripts/ssp_experiment.sh [BUILD_DIR]      (default: build)
set -euo pipefail
build=${1:-build}
petrel="$build/petrel"
[[ -x "$petrel" ]] || { echo "ssp_experiment: build petrel first (make)" >&2; exit 1; }
work=$(mktemp -d /tmp/petrel-ssp.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Data: synthetic rank-8 ratings, and WordNet glosses as hashed bag-of-words (45 classes).
"$petrel" data synth-ratings --users 2000 --items 1500 --rank 8 --density 0.05 --noise 0.1 \
    --seed 7 "$work/ratings.txt" >/dev/null
"$petrel" data text2libsvm --wordnet /usr/share/wordnet --hash-bits 16 -o "$work/wn" >/dev/null

models=(bsp ssp:1 ssp:2 ssp:4 ssp:8 async)

# run NAME TARGET ARGS...: one line per consistency model.
run() {
    local name=$1 target=$2
    shift 2
    printf '%-7s %-7s %10s %14s %12s %10s %10s\n' app sync wall_s time_to_target clocks_to_tgt final_loss wait_s
    for m in "${models[@]}"; do
        out="$work/$name-${m/:/}"
        "$petrel" train "$@" --servers 1 --workers 3 --sync "$m" --straggler 0:2 -q \
            --out "$out" >/dev/null 2>&1 || { echo "$name $m: failed" >&2; continue; }
        python3 - "$out/metrics.jsonl" "$name" "$m" "$target" <<'EOF'
import json, sys
path, name, sync, target = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
clocks = [e for e in map(json.loads, open(path)) if e["event"] == "clock"]
key = "mse" if "mse" in clocks[0] else "loss"
hit_t = hit_c = None
avg = None
for e in clocks:  # an exponential moving average smooths the per-batch loss
    avg = e[key] if avg is None else 0.95 * avg + 0.05 * e[key]
    if hit_t is None and avg <= target:
        hit_t, hit_c = e["time_s"], e["clock"]
wait = sum(e["wait_s"] for e in clocks)
fmt = lambda v, f: f % v if v is not None else "not reached"
print("%-7s %-7s %10.2f %14s %12s %10.4f %10.2f" % (name, sync, clocks[-1]["time_s"],
      fmt(hit_t, "%.2f"), fmt(hit_c, "%d"), avg, wait))
EOF
    done
}

echo "# matrix factorization, rank 8, target train MSE 0.30"
run mf 0.30 --model mf --data "$work/ratings.txt" --rank 8 --lr 0.02 --batch 256 --epochs 12
echo "# softmax regression (45 classes) on WordNet glosses, target train loss 2.0"
run logreg 2.0 --model logreg --data "$work/wn.train.svm" --test "$work/wn.test.svm" \
    --lr 5 --batch 64 --epochs 4
