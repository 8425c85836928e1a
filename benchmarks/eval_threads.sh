#!/usr/bin/env bash
# Evaluation throughput on this machine's cores: one process on every core against two single-threaded
# processes side by side (and one single-threaded process alone), all running the same PGD evaluation of a
# trained run. Usage: bash benchmarks/eval_threads.sh WORKDIR [STEPS]   (STEPS: PGD steps, default 150)
# Each job: launch/evaluate.py on the first 2 000 test images, batch 1 000, PGD-STEPS at eps 0.1, no AutoAttack.
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:?usage: bash benchmarks/eval_threads.sh WORKDIR [STEPS] (a trained run, e.g. a study run)}
steps=${2:-150}
out=$(mktemp -d)
export TF_CPP_MIN_LOG_LEVEL=3
job() {
    python launch/evaluate.py --workdir="$workdir" --limit=2000 --eps=0.1 --batch_size=1000 --steps="$steps" \
        --attack_step_size=6.375 --autoattack=none --resume=false --output_dir="$out/$1" > "$out/$1.log" 2>&1 ||
        { echo "job $1 failed: see $out/$1.log"; exit 1; }
}
single() { TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 job "$1"; }
seconds() { local start=$1; echo "$(date +%s.%N) - $start" | bc; }
start=$(date +%s.%N); job a
echo "one process, default threads (all cores): $(seconds "$start") s for 1 job"
start=$(date +%s.%N); single b & single c & wait
echo "two single-threaded processes side by side: $(seconds "$start") s for 2 jobs"
start=$(date +%s.%N); single d
echo "one single-threaded process alone: $(seconds "$start") s for 1 job"
rm -rf "$out"
