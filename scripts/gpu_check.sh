#!/usr/bin/env bash
# One prepared GPU session: the assignment benchmark, a first training run that logs every step
# (and CubeCL's compilation/autotune log), then, if that run reached its steps, the training-step
# overhead of each assignment method on the Fashion-MNIST EDM recipe and short EDM, flow, FDM and
# CT runs whose sample grids show whether the recipes learn. Every stage has its own time limit,
# so one slow stage cannot eat the others; everything lands in OUT.
#
# Seen on an H200 (2026-11-26): the bench ran; no training run reached step 10 within 200 s
# (cold kernel compilation/autotune, or a hang: the first stage below is there to tell which).
#
#   scripts/gpu_check.sh [BIN] [OUT] [DEVICE]     (defaults: target/release/emulsion, gpu-check, cuda)
#
# Build BIN with `cargo build --release --features cuda`.
set -uo pipefail
bin=${1:-target/release/emulsion}
out=${2:-gpu-check}
device=${3:-cuda}
mkdir -p "$out/runs"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee "$out/gpu.txt"

echo "== bench assign"
timeout 100 "$bin" bench assign --batch 128,1024,4096 --dim 3072 --repeats 3 --device "$device" 2>&1 | tee "$out/bench_assign.txt"

# One run per assignment method; the same seed, data and model, so only the assignment differs.
train() { # NAME CONFIG SECONDS [--set K=V]...
    local name=$1 config=$2 limit=$3
    shift 3
    timeout "$limit" "$bin" train "$config" --device "$device" --overwrite \
        --set run.name="$name" --set run.out_dir="$out/runs" --set train.log_every=50 "$@" \
        >"$out/runs/$name.log" 2>&1
    echo "$name: exit $? after $(grep -c . "$out/runs/$name/metrics.jsonl" 2>/dev/null || echo 0) log lines"
}
echo "== first training run: every step logged, CubeCL log in $out/cubecl.log"
start=$(date +%s)
CUBECL_DEBUG_LOG="$out/cubecl.log" train first configs/fashion_edm.toml 240 --set train.steps=20 --set train.log_every=1 \
    --set train.sample_every=0 --set train.checkpoint_every=20 --set sample.n=10
echo "first run: $(( $(date +%s) - start )) s"
if [ ! -s "$out/runs/first/metrics.jsonl" ]; then
    echo "no step finished: skipping the timed stages"
    exit 1
fi

echo "== step overhead (300 steps each)"
quick=(--set train.steps=300 --set train.sample_every=0 --set train.checkpoint_every=300 --set sample.n=10)
train overhead_none configs/fashion_edm.toml 40 "${quick[@]}" --set assignment.method=none
train overhead_lsa configs/fashion_edm.toml 40 "${quick[@]}" --set assignment.method=lsa --set assignment.quantize=fp16
train overhead_auction configs/fashion_edm.toml 40 "${quick[@]}" --set assignment.method=auction --set assignment.quantize=fp16
train overhead_knn configs/fashion_edm.toml 40 "${quick[@]}" --set assignment.method=knn

echo "== quality (EDM, flow, FDM, CT)"
long=(--set train.steps=3000 --set train.sample_every=1000 --set train.checkpoint_every=1000)
for name in edm flow fdm ct; do
    train "$name" "configs/fashion_$name.toml" 75 "${long[@]}"
done
for name in edm flow fdm ct; do
    last=$(ls "$out/runs/$name/samples/" 2>/dev/null | tail -1)
    [ -n "$last" ] && cp "$out/runs/$name/samples/$last" "$out/${name}_$last"
done

python3 - "$out" <<'EOF'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for run in sorted((out / "runs").glob("*/metrics.jsonl")):
    lines = [json.loads(l) for l in run.read_text().splitlines() if l.strip()]
    steady = [l for l in lines if l["step"] > 100] or lines
    ips = statistics.median(l["images_per_s"] for l in steady) if steady else float("nan")
    ms = [l["assign_ms"] for l in steady if l.get("assign_ms") is not None]
    rows.append((run.parent.name, lines[-1]["step"] if lines else 0, lines[-1]["loss"] if lines else float("nan"), ips,
                 statistics.median(ms) if ms else 0.0))
base = {r[0]: r[3] for r in rows}.get("overhead_none")
print("| run | last step | last loss | images/s (median, steps > 100) | assign ms (median) | vs none |")
print("|---|---|---|---|---|---|")
for name, step, loss, ips, ms in rows:
    ratio = f"{base / ips:.3f}x time" if base and name.startswith("overhead") else ""
    print(f"| {name} | {step} | {loss:.4f} | {ips:.1f} | {ms:.2f} | {ratio} |")
EOF
