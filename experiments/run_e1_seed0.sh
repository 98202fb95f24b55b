#!/bin/bash
# usage: run_e1.sh rule... ; runs E1 seed 0 for each rule sequentially, resuming if possible
cd /work/main
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
for r in "$@"; do
  d=results/e1/e1_$r/seed0
  mkdir -p $d
  if [ -f $d/results.json ]; then continue; fi
  start=$(date +%s)
  if [ -f $d/latest.npz ]; then
    python -m minigrad_pfa.cli train --resume $d --no-progress >> $d/log.txt 2>&1
  else
    python -m minigrad_pfa.cli train experiments/e1/$r.yaml --set seed=0 --run-dir $d --no-progress >> $d/log.txt 2>&1
  fi
  echo "$r exit $? wall $(( $(date +%s) - start ))s host $(hostname) $(date -u)" >> results/e1/runlog.txt
done
