#!/bin/bash
# Run experiment configs (seed 0) one after another with one BLAS thread, logging wall times.
# usage: experiments/run_queue.sh OUT_DIR CONFIG...   e.g. experiments/run_queue.sh results/f1 experiments/f1/bp.yaml
cd "$(dirname "$0")/.." || exit 1
out=$1; shift
for cfg in "$@"; do
  s=$(date +%s)
  minigrad-pfa grid "$cfg" --seeds 0 --out "$out" --threads 1 >> "$out/grid.log" 2>&1
  echo "$cfg exit $? wall $(( $(date +%s) - s ))s host $(hostname) $(date -u)" >> "$out/runlog.txt"
done
