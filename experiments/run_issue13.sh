#!/bin/bash
# Issue 13's runs, one at a time, in the issue's order (cheap E4 MLP points interleaved early),
# from a frozen code snapshot so that edits to the working tree never reach a running job.
#
# usage (from anywhere; resumable: finished runs are skipped, interrupted ones resumed):
#   setsid nohup experiments/run_issue13.sh > /dev/null 2>&1 &
# environment:
#   SCI         code snapshot (a git worktree of this repository; default /work/sci;
#               created at HEAD if missing)
#   SCI_REFRESH file holding a commit: the snapshot is moved to it between two runs, then the
#               file is removed (default /work/coord/sci_refresh)
#   PASSES      passes over the list (default 2: a config missing or failing in pass 1, e.g.
#               one needing newer code, gets another chance after a refresh)
# Pause/continue the whole queue (script, grid and its training child) with the process
# group: kill -STOP -- -PGID / kill -CONT -- -PGID (setsid makes PGID = the script's PID).
#
# Each run goes through `minigrad-pfa grid --threads 1` (nice 19) into results/<family>/
# of THIS checkout (configs are read from here too; code from $SCI, via PYTHONSAFEPATH so
# that the working directory does not shadow it); results/<family>/runlog.txt gets one line
# per run: config, exit status, wall time, host, code commit, date.
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
SCI=${SCI:-/work/sci}
SCI_REFRESH=${SCI_REFRESH:-/work/coord/sci_refresh}
PASSES=${PASSES:-2}
[ -d "$SCI" ] || git -C "$repo" worktree add --detach "$SCI" HEAD || exit 1

# family (results/<family>) : config, in run order
QUEUE="
f1sf experiments/f1sf/usf_sn.yaml
e4 experiments/e4/fa_d0.5.yaml
e4 experiments/e4/dfa_d0.5.yaml
e4 experiments/e4/sf_d0.5.yaml
f1sf experiments/f1sf/usf_init.yaml
e4 experiments/e4/fa_d0.3.yaml
e4 experiments/e4/dfa_d0.3.yaml
e4 experiments/e4/sf_d0.3.yaml
f1sf experiments/f1sf/usf_const.yaml
e4 experiments/e4/fa_d0.17.yaml
e4 experiments/e4/dfa_d0.17.yaml
e4 experiments/e4/sf_d0.17.yaml
f1sf experiments/f1sf/frsf.yaml
e4 experiments/e4/dfa_d0.1.yaml
e4 experiments/e4/sf_d0.1.yaml
e4 experiments/e4/fa_d0.05.yaml
e4 experiments/e4/dfa_d0.05.yaml
e4 experiments/e4/sf_d0.05.yaml
f1sf experiments/f1sf/brsf.yaml
f1sf experiments/f1sf/usf_ei.yaml
f1sf experiments/f1sf/densefa.yaml
f1sf experiments/f1sf/usf_bm.yaml
f2 experiments/f2/fa_d0.3.yaml
f2 experiments/f2/sf_d0.3.yaml
f2 experiments/f2/pfa_d0.3.yaml
f2 experiments/f2/fa_d0.1.yaml
f2 experiments/f2/sf_d0.1.yaml
f2 experiments/f2/pfa_d0.1.yaml
e4 experiments/e4/pfa_d0.5.yaml
e4 experiments/e4/pfa_d0.3.yaml
e4 experiments/e4/pfa_d0.17.yaml
e4 experiments/e4/pfa_d0.05.yaml
e1 experiments/e1/kp.yaml
f1 experiments/f1/kp.yaml
f1:1 experiments/f1/bp.yaml
f1:1 experiments/f1/pfa.yaml
f1:1 experiments/f1/pfa_o.yaml
f1:2 experiments/f1/bp.yaml
f1:2 experiments/f1/pfa.yaml
f1:2 experiments/f1/pfa_o.yaml
"

refresh() {
  [ -s "$SCI_REFRESH" ] || return 0
  local want
  want=$(cat "$SCI_REFRESH")
  if git -C "$SCI" checkout --quiet --detach "$want"; then
    echo "snapshot moved to $want $(date -u)" >> "$repo/results/runlog_issue13.txt"
    rm -f "$SCI_REFRESH"
  fi
}

for pass in $(seq "$PASSES"); do
  echo "$QUEUE" | while read -r fam cfg; do
    [ -n "$cfg" ] || continue
    refresh
    seed=${fam#*:}; fam=${fam%%:*}
    [ "$seed" = "$fam" ] && seed=0
    out=results/$fam
    mkdir -p "$out"
    # complete already? (results.json in the run directory): nothing to log
    name=$(sed -n 's/^name: //p' "$cfg" 2>/dev/null)
    [ -n "$name" ] && [ -f "$out/$name/seed$seed/results.json" ] && continue
    s=$(date +%s)
    PYTHONSAFEPATH=1 PYTHONPATH="$SCI" OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
      MKL_NUM_THREADS=1 nice -n 19 python -m minigrad_pfa.cli grid "$cfg" --seeds "$seed" \
      --out "$out" --threads 1 < /dev/null >> "$out/grid.log" 2>&1
    rc=$?
    echo "$cfg seed $seed exit $rc wall $(( $(date +%s) - s ))s host $(hostname)" \
         "code $(git -C "$SCI" rev-parse --short HEAD) pass $pass $(date -u)" >> "$out/runlog.txt"
  done
done
echo "queue finished $(date -u)" >> "$repo/results/runlog_issue13.txt"
