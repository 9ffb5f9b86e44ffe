#!/bin/bash
# The transformer ranker's speed target, end to end: the same `kfacel train` and `kfacel evaluate`
# commands on the transformer ranker at the baseline commit
# (ee428ab) and at HEAD in float32 and in bfloat16 autocast, one after the
# other in one run (ratios, not absolute times, are the result). Prints training
# queries/s (the trainer's own wall-clock count, dev evaluation excluded), the CPU
# seconds (user + system) of the whole train command (480 queries, then the 2,000 dev
# queries) and of `evaluate` on the dev split, and dev accuracy. With one thread the CPU
# seconds hold even when other jobs share the machine; wall times do not.
# Writes under the ignored runs/speed (a worktree of ee428ab, the models, the outputs).
# Reported in docs/results.md ("The transformer ranker's step"); each run in
# benchmarks/archive/journal.md ("bfloat16 autocast and one word lookup a step",
# "K-FAC chunked by length, fused AdamW", "Two threads, after fused AdamW").
#   bash benchmarks/transformer_speed.sh [THREADS]
set -e
cd "$(dirname "$0")/.."
THREADS=${1:-2}
TASK=tasks/public3-small/medmentions
OUT=runs/speed
BASE=$OUT/ee428ab
mkdir -p $OUT
[ -d $BASE/src ] || git worktree add --detach $BASE ee428ab >/dev/null
TRAIN=(train --task $TASK --model transformer --max-train 480 --epochs 1 --batch-size 16
       --lr 2e-4 --aliases --threads "$THREADS")
run() {  # name, PYTHONPATH, extra train options...
  local name=$1 path=$2; shift 2
  local extra=("$@") eval_extra=()
  [ "${extra[*]}" = "--precision bfloat16" ] && eval_extra=(--precision bfloat16)
  rm -rf "$OUT/model-$name"
  local log train_cpu eval_cpu
  TIMEFORMAT='%U %S'
  train_cpu=$( { time PYTHONPATH=$path .venv/bin/python -m kfacel "${TRAIN[@]}" \
      --out "$OUT/model-$name" "${extra[@]}" > "$OUT/train-$name.txt" 2>/dev/null; } 2>&1 )
  eval_cpu=$( { time PYTHONPATH=$path .venv/bin/python -m kfacel evaluate "$OUT/model-$name" \
      --task $TASK --split dev --threads "$THREADS" "${eval_extra[@]}" \
      > "$OUT/eval-$name.txt"; } 2>&1 )
  .venv/bin/python - "$name" "$OUT/train-$name.txt" "$train_cpu" "$eval_cpu" \
      "$OUT/eval-$name.txt" <<'EOF'
import json, sys
name, train_out, train_cpu, eval_cpu, table = sys.argv[1:]
train = json.loads(open(train_out).read().strip().splitlines()[-1])
acc = open(table).read().split("\n")[1].split()[2]
cpu = [sum(map(float, t.split())) for t in (train_cpu, eval_cpu)]
print(f"{name:<14} train {train['queries_per_s']:6.2f} q/s (wall)  train cmd "
      f"{cpu[0]:6.1f} CPU s  evaluate cmd {cpu[1]:6.1f} CPU s  dev acc@1 {float(acc):.4f}")
EOF
}
echo "threads $THREADS; $(lscpu | grep 'Model name' | sed 's/  */ /g')"
run ee428ab "$BASE/src"
run head-float32 src
run head-bfloat16 src --precision bfloat16
