#!/usr/bin/env bash
# Aggregate training throughput of N runs at once on one device, as `emulsion sweep
# --jobs-per-device N` runs them: for each N, N `emulsion bench train` processes start together
# and the table gives their summed steady-state images/s and its ratio to one run alone.
#
#   scripts/concurrent_runs.sh BIN CONFIG DEVICE "1 2 4 8" [bench train options…]
#   scripts/concurrent_runs.sh .gpu/emulsion-cuda configs/fashion_edm.toml cuda "1 2 4 8" --steps 41
#
# Each process times its own windows after its own warm-up; with equal runs the windows overlap,
# and the per-run figures show whether one was left alone at the end. Output: a Markdown table on
# stdout, every process's JSON under ${WORK:-/tmp/emulsion-concurrent}/N-i.json.
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,10p "$0" >&2; exit 2; }
bin=$1 config=$2 device=$3 counts=$4
shift 4
work=${WORK:-/tmp/emulsion-concurrent}
mkdir -p "$work"
for n in $counts; do
    pids=()
    for i in $(seq 1 "$n"); do
        "$bin" bench train "$config" --device "$device" --json "$@" >"$work/$n-$i.json" 2>"$work/$n-$i.log" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "a run of $n at once failed: see $work/$n-*.log" >&2; exit 1; }
    done
done
python3 - "$work" $counts <<'PY'
import json, pathlib, sys
work, counts = pathlib.Path(sys.argv[1]), [int(n) for n in sys.argv[2:]]
rows, alone = [], None
for n in counts:
    each = [json.loads((work / f"{n}-{i}.json").read_text())["images_per_s"] for i in range(1, n + 1)]
    total = sum(each)
    alone = alone or (total if n == 1 else None)
    rows.append((n, total, each))
print("| runs at once | images/s, all runs | × one run | each run |")
print("|---:|---:|---:|---|")
for n, total, each in rows:
    ratio = f"{total / alone:.2f}" if alone else "–"
    print(f"| {n} | {total:.1f} | {ratio} | {', '.join(f'{x:.1f}' for x in each)} |")
PY
