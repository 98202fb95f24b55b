#!/bin/bash
# Issue 13's runs, one at a time, in the issue's order (cheap E4 MLP points interleaved early),
# from a frozen code snapshot so that edits to the working tree never reach a running job.
#
# usage (resumable: finished runs are skipped, interrupted ones resumed):
#   setsid nohup experiments/run_issue13.sh > /dev/null 2>&1 &     # run the queue
#   experiments/run_issue13.sh --status                            # what is done / running / pending
# The queue is experiments/issue13_queue.txt: "family[:seed] config" per line, in run order;
# runs go to results/<family>/<config name>/seed<seed> (seed 0 unless given).
# environment:
#   SCI         code snapshot (a git worktree of this repository; default /work/sci, or
#               /work/sci_reverse with ORDER=reverse; created at HEAD if missing)
#   SCI_REFRESH file holding a commit: the snapshot is moved to it between two runs, then the
#               file is removed (default /work/coord/sci_refresh)
#   PASSES      passes over the list (default 2: a config missing or failing in pass 1, e.g.
#               one needing newer code, gets another chance after a refresh)
#   QUEUE       the list (default experiments/issue13_queue.txt)
#   ORDER       "reverse": walk the list from its end (a second queue on another free core,
#               meeting the first in the middle; a run the other queue holds is refused by
#               its run.lock, logged, and retried in the next pass). It has its own
#               snapshot and refresh file (/work/sci_reverse, /work/coord/sci_refresh_reverse):
#               a refresh moves the files under a running job, and a module that job
#               imports later would come from the new code
# Pause/continue the whole queue (script, grid and its training child) with the process
# group: kill -STOP -- -PGID / kill -CONT -- -PGID (setsid makes PGID = the script's PID).
#
# Each run goes through `minigrad-pfa grid --threads 1` (nice 19) into results/<family>/
# of THIS checkout (configs are read from here too; code from $SCI, via PYTHONSAFEPATH so
# that the working directory does not shadow it); results/<family>/runlog.txt gets one line
# per run: config, exit status, wall time, host, code commit, date.
# Edit this file only by replacing it (write a new file, then mv): a running bash reads its
# script as it goes, and an in-place edit would change what it reads next.
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
# a reverse queue gets its own snapshot and refresh file by default (see ORDER)
SCI=${SCI:-/work/sci${ORDER:+_$ORDER}}
SCI_REFRESH=${SCI_REFRESH:-/work/coord/sci_refresh${ORDER:+_$ORDER}}
PASSES=${PASSES:-2}
QUEUE_FILE=${QUEUE:-$repo/experiments/issue13_queue.txt}

# "family seed out config name run_dir" per queue line
entries() {
  while read -r fam cfg; do
    [ -n "$cfg" ] || continue
    case $fam in \#*) continue ;; esac
    seed=${fam#*:}; fam=${fam%%:*}
    [ "$seed" = "$fam" ] && seed=0
    name=$(sed -n 's/^name: //p' "$cfg" 2>/dev/null)
    echo "$fam $seed results/$fam $cfg ${name:-?} results/$fam/${name:-?}/seed$seed"
  done < <(if [ "${ORDER:-}" = reverse ]; then tac "$QUEUE_FILE"; else cat "$QUEUE_FILE"; fi)
}

if [ "$1" = "--status" ]; then
  entries | while read -r fam seed out cfg name dir; do
    if [ -f "$dir/results.json" ]; then
      state=$(python -c "import json,sys; r=json.load(open(sys.argv[1])); \
print(f\"done      test {r['test_acc']:.2f}%  wall {r['wall_s']/3600:.2f} h\")" "$dir/results.json")
    elif [ -f "$dir/run.lock" ] || [ -f "$dir/metrics.jsonl" ]; then
      n=$(grep -vc '"step"' "$dir/metrics.jsonl" 2>/dev/null || echo 0)
      state="started   $n/$(sed -n 's/^epochs: //p' "$cfg") epochs logged"
    else
      state="pending"
    fi
    printf '%-48s %s\n' "$dir" "$state"
  done
  exit 0
fi

[ -d "$SCI" ] || git -C "$repo" worktree add --detach "$SCI" HEAD || exit 1

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
  entries | while read -r fam seed out cfg name dir; do
    [ -f "$dir/results.json" ] && continue          # complete: nothing to run or log
    refresh
    mkdir -p "$out"
    code=$(git -C "$SCI" rev-parse --short HEAD)  # the code this run starts with
    s=$(date +%s)
    PYTHONSAFEPATH=1 PYTHONPATH="$SCI" OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
      MKL_NUM_THREADS=1 nice -n 19 python -m minigrad_pfa.cli grid "$cfg" --seeds "$seed" \
      --out "$out" --threads 1 < /dev/null >> "$out/grid.log" 2>&1
    rc=$?
    echo "$cfg seed $seed exit $rc wall $(( $(date +%s) - s ))s host $(hostname)" \
         "code $code pass $pass${ORDER:+ order $ORDER}" \
         "$(date -u)" >> "$out/runlog.txt"
  done
done
echo "queue finished $(date -u)" >> "$repo/results/runlog_issue13.txt"
