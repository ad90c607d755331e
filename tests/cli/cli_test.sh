#!/usr/bin/env bash
# The petrel command line: help texts, exit codes (0 ok, 1 failure, 2 usage),
# error messages, and the files a short training run leaves.
set -u
petrel=${1:?usage: cli_test.sh PATH_TO_PETREL}
. "$(dirname "${BASH_SOURCE[0]}")/../tap.sh"

expect_rc "help exits 0" 0 "$petrel" --help
grep -q "train" "$tmp/out" && ok "help lists train" || fail "help lists train" "no 'train' in help"
expect_rc "train help exits 0" 0 "$petrel" train --help
for flag in --model --hidden --data --test --epochs --batch --optimizer --lr --weight-decay \
            --threads --seed --out --max-steps --kernels --progress --no-progress --quiet --help \
            --workers --comm --bucket-kb --overlap --no-overlap --hogwild --locked --round-robin \
            --l2 --decay --test-fraction --rank; do
    grep -q -- "$flag" "$tmp/out" || fail "train help lists $flag" "missing"
done
grep -q "\[mlp\]" "$tmp/out" && grep -q "\[64\]" "$tmp/out" && ok "train help shows defaults" ||
    fail "train help shows defaults" "no [mlp] or [64]"
expect_rc "no command is a usage error" 2 "$petrel"
expect_rc "unknown command" 2 "$petrel" frobnicate
expect_rc "unknown flag" 2 "$petrel" train --frobnicate
expect_rc "bad number" 2 "$petrel" train --epochs many
grep -q "petrel: error: --epochs wants an integer" "$tmp/err" && ok "bad number message" ||
    fail "bad number message" "$(cat "$tmp/err")"
expect_rc "unknown optimizer" 2 "$petrel" train --optimizer rmsprop
expect_rc "missing data file" 1 "$petrel" train --data "$tmp/none.svm" --out "$tmp/r0"
grep -q "petrel: error: loading data: .*none.svm" "$tmp/err" && ok "missing file is named" ||
    fail "missing file is named" "$(cat "$tmp/err")"

printf '+1 1:0.5 3:1\n-1 2:1 # comment\n+1 1:1 3:0.5\n-1 2:0.8\n+1 3:2x\n' >"$tmp/bad.svm"
expect_rc "malformed libsvm" 1 "$petrel" train --data "$tmp/bad.svm" --out "$tmp/r1"
grep -q "bad.svm:5:" "$tmp/err" && ok "malformed file names file and line" ||
    fail "malformed file names file and line" "$(cat "$tmp/err")"

# A small libsvm problem: label +1 when feature 1 exceeds feature 2.
awk 'BEGIN { srand(3); for (i = 0; i < 400; i++) { a = rand(); b = rand();
      printf "%s 1:%.4f 2:%.4f 3:%.4f\n", (a > b ? "+1" : "-1"), a, b, rand() } }' >"$tmp/train.svm"
awk 'BEGIN { srand(4); for (i = 0; i < 200; i++) { a = rand(); b = rand();
      printf "%s 1:%.4f 2:%.4f 3:%.4f\n", (a > b ? "+1" : "-1"), a, b, rand() } }' >"$tmp/test.svm"
expect_rc "train on libsvm" 0 "$petrel" train --model mlp --hidden 16 --data "$tmp/train.svm" \
    --test "$tmp/test.svm" --epochs 30 --batch 16 --lr 0.2 --out "$tmp/run" --no-progress
acc=$(sed -n 's/.*test_accuracy \([0-9.]*\).*/\1/p' "$tmp/out")
awk -v a="${acc:-0}" 'BEGIN { exit !(a >= 0.9) }' && ok "libsvm accuracy $acc >= 0.9" ||
    fail "libsvm accuracy" "got '${acc}' from: $(cat "$tmp/out")"
[[ -s "$tmp/run/model.ckpt" ]] && ok "checkpoint written" || fail "checkpoint written" "missing"
[[ $(grep -c '"event":"epoch"' "$tmp/run/metrics.jsonl") -eq 30 ]] && ok "30 epoch events" ||
    fail "30 epoch events" "$(wc -l <"$tmp/run/metrics.jsonl") lines"
grep -q '"event":"final".*"peak_rss_mb"' "$tmp/run/metrics.jsonl" && ok "final event" ||
    fail "final event" "missing"
expect_rc "reference kernels and adam" 0 "$petrel" train --model softmax --data "$tmp/train.svm" \
    --epochs 2 --optimizer adam --kernels reference --out "$tmp/run2" --quiet
grep -q '"kernels":"reference"' "$tmp/run2/metrics.jsonl" && ok "kernel set recorded" ||
    fail "kernel set recorded" "missing"

# Data-parallel: two local workers, SFB for the first layer.
expect_rc "train with 2 workers" 0 "$petrel" train --workers 2 --comm sfb --model mlp --hidden 16 \
    --data "$tmp/train.svm" --test "$tmp/test.svm" --epochs 30 --batch 8 --lr 0.2 --out "$tmp/dp" \
    --no-progress
acc=$(sed -n 's/.*test_accuracy \([0-9.]*\).*/\1/p' "$tmp/out" | tail -1)
awk -v a="${acc:-0}" 'BEGIN { exit !(a >= 0.9) }' && ok "2-worker accuracy $acc >= 0.9" ||
    fail "2-worker accuracy" "got '${acc}' from: $(tail -c 500 "$tmp/out") $(tail -c 500 "$tmp/err")"
grep -q '"workers":2' "$tmp/dp/metrics.jsonl" && grep -q '"comm":"sfb"' "$tmp/dp/metrics.jsonl" &&
    ok "metrics record the workers and comm" || fail "metrics record the workers and comm" "missing"
grep -q '"exposed_comm_s"' "$tmp/dp/metrics.jsonl" && grep -q '"event":"timeline"' "$tmp/dp/metrics.jsonl" &&
    ok "metrics carry the communication timeline" || fail "timeline" "missing"
expect_rc "bad --comm" 2 "$petrel" train --workers 2 --comm gossip

# petrel data text2libsvm: help, a tiny corpus of class directories, a missing corpus.
expect_rc "text2libsvm help exits 0" 0 "$petrel" data text2libsvm --help
for flag in --out --per-line --wordnet --fortune-dir --hash-bits --bigrams --tfidf --no-l2 \
            --test-fraction --seed --max-df; do
    grep -q -- "$flag" "$tmp/out" || fail "text2libsvm help lists $flag" "missing"
done
mkdir -p "$tmp/corpus/ham" "$tmp/corpus/spam"
for i in 1 2 3 4 5; do
    echo "meeting notes for the project review $i" >"$tmp/corpus/ham/$i.txt"
    echo "win cash now, free prize number $i" >"$tmp/corpus/spam/$i.txt"
done
expect_rc "text2libsvm tiny corpus" 0 "$petrel" data text2libsvm --tfidf --bigrams \
    --test-fraction 0.2 --seed 3 -o "$tmp/tc" "$tmp/corpus"
grep -q "10 documents (8 train, 2 test), 2 classes" "$tmp/out" &&
    [[ $(wc -l <"$tmp/tc.train.svm") -eq 8 && $(wc -l <"$tmp/tc.test.svm") -eq 2 ]] &&
    grep -qx "1 spam" "$tmp/tc.classes" && ok "text2libsvm writes the split and classes" ||
    fail "text2libsvm writes the split and classes" "$(cat "$tmp/out" "$tmp/err")"
expect_rc "text2libsvm missing corpus" 1 "$petrel" data text2libsvm -o "$tmp/tc" "$tmp/nocorpus"
grep -q "petrel: error: converting text: .*nocorpus" "$tmp/err" && ok "missing corpus is named" ||
    fail "missing corpus is named" "$(cat "$tmp/err")"

# Hogwild!: sparse logistic regression on the same problem, lock-free and the baselines.
for mode in --hogwild --locked --round-robin; do
    expect_rc "logreg $mode" 0 "$petrel" train --model logreg $mode --threads 2 --data "$tmp/train.svm" \
        --test "$tmp/test.svm" --epochs 20 --lr 0.5 --out "$tmp/hw$mode" --no-progress
    acc=$(sed -n 's/.*test_accuracy \([0-9.]*\).*/\1/p' "$tmp/out" | tail -1)
    awk -v a="${acc:-0}" 'BEGIN { exit !(a >= 0.9) }' && ok "logreg $mode accuracy $acc >= 0.9" ||
        fail "logreg $mode accuracy" "got '${acc}' from: $(tail -c 300 "$tmp/out")"
done
grep -q '"strategy":"hogwild"' "$tmp/hw--hogwild/metrics.jsonl" && [[ -s "$tmp/hw--hogwild/model.ckpt" ]] &&
    ok "hogwild metrics and checkpoint" || fail "hogwild metrics and checkpoint" "missing"
expect_rc "svm by default lock-free" 0 "$petrel" train --model svm --data "$tmp/train.svm" --epochs 5 \
    --out "$tmp/svm" --quiet
expect_rc "hogwild rejects mlp" 2 "$petrel" train --hogwild --model mlp --data "$tmp/train.svm"

# Matrix factorization by Hogwild!: synthetic rank-4 ratings (noise 0.1), every mode.
expect_rc "synth-ratings help exits 0" 0 "$petrel" data synth-ratings --help
for flag in --users --items --rank --density --noise --seed; do
    grep -q -- "$flag" "$tmp/out" || fail "synth-ratings help lists $flag" "missing"
done
expect_rc "synth-ratings" 0 "$petrel" data synth-ratings --users 400 --items 400 --rank 4 \
    --density 0.1 --noise 0.1 --seed 7 "$tmp/mf.ratings"
n=$(grep -vc '^#' "$tmp/mf.ratings")
[[ $n -gt 15000 && $n -lt 17000 ]] && ok "synth-ratings wrote $n ratings (about 16000)" ||
    fail "synth-ratings count" "$n lines"
expect_rc "synth-ratings bad density" 2 "$petrel" data synth-ratings --density 1.5 "$tmp/x.ratings"
for mode in --hogwild --locked --round-robin; do
    expect_rc "mf $mode" 0 "$petrel" train --model mf $mode --threads 2 --rank 4 --data "$tmp/mf.ratings" \
        --epochs 25 --lr 0.15 --decay 0.95 --l2 0.001 --out "$tmp/mf$mode" --quiet
    rmse=$(sed -n 's/.*test_rmse \([0-9.]*\).*/\1/p' "$tmp/out" | tail -1)
    awk -v r="${rmse:-9}" 'BEGIN { exit !(r < 0.2) }' && ok "mf $mode test RMSE $rmse < 0.2" ||
        fail "mf $mode test RMSE" "got '${rmse}' from: $(tail -c 300 "$tmp/out")"
done
[[ $(grep -c '"event":"epoch".*"test_rmse"' "$tmp/mf--hogwild/metrics.jsonl") -eq 25 ]] &&
    grep -q '"event":"final".*"test_rmse"' "$tmp/mf--hogwild/metrics.jsonl" &&
    [[ -s "$tmp/mf--hogwild/model.ckpt" ]] && ok "mf metrics and checkpoint" ||
    fail "mf metrics and checkpoint" "$(head -c 300 "$tmp/mf--hogwild/metrics.jsonl")"
printf '0 0 4\n1 2 3.5\n# comment\n2 -1 5\n' >"$tmp/bad.ratings"
expect_rc "malformed ratings" 1 "$petrel" train --model mf --data "$tmp/bad.ratings" --out "$tmp/mfbad"
grep -q "bad.ratings:4: item id '-1' is negative" "$tmp/err" && ok "malformed ratings name file and line" ||
    fail "malformed ratings name file and line" "$(cat "$tmp/err")"
expect_rc "mf without data" 2 "$petrel" train --model mf
expect_rc "test-fraction outside mf" 2 "$petrel" train --model logreg --test-fraction 0.2 \
    --data "$tmp/train.svm"

tap_done
