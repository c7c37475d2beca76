#!/usr/bin/env bash
# One prepared GPU window: how fast CUDA training starts and runs, against PyTorch on the same GPU.
#
# On the GPU machine (no Rust there), from the repository root, with .gpu/ carried (made here by
# scripts/gpu_build.sh: two stripped CUDA binaries, without and with autotune, and the Inception
# layout for timing-only weights):
#
#   scripts/gpu_check.sh [OUT]        OUT: where the results go (default $OUT, else gpu-check)
#
# Stages, each under its own time limit and all within BUDGET seconds (default 540), in this order
# (STAGES="a_cold torch_fashion ..." runs a subset, e.g. the rest in a second call):
#   a_cold        bench train fashion_edm.toml, no-autotune build, empty kernel cache
#   torch_fashion scripts/torch_reference.py fashion_edm.toml, eager
#   a_warm        a_cold again: its compiled kernels (PTX) come from the cache
#   b_cold        bench train fashion_edm.toml, autotune build, empty kernel cache
#   b_warm        b_cold again: autotune results and PTX from the cache
#   cifar         bench train cifar.toml, train.micro_batch=0, with the build of higher images/s
#   torch_cifar   torch_reference.py cifar.toml, eager, micro_batch=0
#   fid           bench fid --device cuda (timing-only random Inception weights)
#   assign        bench assign --device cuda
#   compile_fashion, compile_cifar   torch_reference.py --mode compile
# CIFAR-10 is not on the machine: both sides train on the same random CIFAR-format files.
# Results: summary.json and summary.md (figures, ratios, targets), logs.tar.xz (every stage's
# output), kernel-cache.tar.xz (both cache folders: carry it back to reuse on the same GPU model
# with the same binaries). Also for a CPU rehearsal: DEVICE=cpu BIN_NOAUTO=… BIN_AUTO=…
# EXTRA_SETS="train.batch_size=4" STEPS=8 WARMUP=1 WINDOW=3 FID_N=8 FID_BATCH=4.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
budget=${BUDGET:-540}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
steps=${STEPS:-40} warmup=${WARMUP:-5} window=${WINDOW:-5}
stages=${STAGES:-a_cold torch_fashion a_warm b_cold b_warm cifar torch_cifar fid assign compile_fashion compile_cifar}
work=${WORK:-/tmp/emulsion-gpu-check}
started=$(date +%s)
mkdir -p "$out" "$work/logs"
log=$work/logs

noauto=${BIN_NOAUTO:-$work/emulsion-cuda}
auto=${BIN_AUTO:-$work/emulsion-cuda-autotune}
for pair in "$noauto:.gpu/emulsion-cuda.xz" "$auto:.gpu/emulsion-cuda-autotune.xz"; do
    bin=${pair%%:*} packed=${pair#*:}
    if [ ! -x "$bin" ] && [ -f "$packed" ]; then xz -dc "$packed" >"$bin" && chmod +x "$bin"; fi
done
# cubecl-cuda opens libnvrtc at run time; PyTorch's NVIDIA wheels carry one when the system has none.
if [ "$device" = cuda ] && ! ldconfig -p 2>/dev/null | grep -q libnvrtc; then
    for dir in $("$py" -c 'import glob, site; print(" ".join(sorted({p.rsplit("/", 1)[0] for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/libnvrtc.so*", recursive=True)})))' 2>/dev/null); do
        export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
    done
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } >"$log/gpu.txt"
git rev-parse HEAD >"$log/commit.txt" 2>/dev/null || cp .gpu/commit "$log/commit.txt" 2>/dev/null

# Random CIFAR-format files: both implementations read the same bytes.
"$py" - "$work/cifar" <<'EOF'
import numpy as np, pathlib, sys
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    records = rng.integers(0, 256, (1024, 3073), np.uint8); records[:, 0] %= 10
    records.tofile(d / f"{name}.bin")
EOF
extra=()
for kv in ${EXTRA_SETS:-}; do extra+=(--set "$kv"); done
cifar_sets=(--set "data.path=$work/cifar" --set train.micro_batch=0)
fid_weights=$work/inception-timing.safetensors
[ -f .gpu/inception-layout.json ] && "$py" scripts/inception_timing_weights.py make .gpu/inception-layout.json "$fid_weights" >"$log/fid_weights.log" 2>&1

# stage NAME LIMIT CMD...: runs CMD with stdout to NAME.out and stderr to NAME.log under
# min(LIMIT, what is left of the budget); one line of stages.jsonl says how it ended.
stage() {
    local name=$1 limit=$2
    shift 2
    case " $stages " in *" $name "*) ;; *) return 0 ;; esac
    local left=$((budget - ($(date +%s) - started) - 10))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        echo "{\"stage\": \"$name\", \"status\": \"skipped: out of budget\"}" >>"$log/stages.jsonl"
        return 1
    fi
    echo "== $name (limit ${limit}s): $*" >&2
    local t0=$(date +%s%N)
    timeout "$limit" "$@" >"$log/$name.out" 2>"$log/$name.log"
    local rc=$?
    local ms=$((($(date +%s%N) - t0) / 1000000))
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((ms / 1000)).$(printf %03d $((ms % 1000))), \"limit\": $limit}" >>"$log/stages.jsonl"
    echo "   rc $rc after ${ms} ms" >&2
    return $rc
}
timing=(--device "$device" --steps "$steps" --warmup "$warmup" --window "$window" --json "${extra[@]}")
torch=("$py" scripts/torch_reference.py)
images_per_s() { "$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["images_per_s"])' "$1" 2>/dev/null || echo 0; }

stage a_cold 150 "$noauto" --kernel-cache "$work/cache-noauto" bench train configs/fashion_edm.toml "${timing[@]}"
stage torch_fashion 90 "${torch[@]}" configs/fashion_edm.toml --mode eager "${timing[@]}"
stage a_warm 90 "$noauto" --kernel-cache "$work/cache-noauto" bench train configs/fashion_edm.toml "${timing[@]}"
stage b_cold 200 "$auto" --kernel-cache "$work/cache-autotune" bench train configs/fashion_edm.toml "${timing[@]}" &&
    stage b_warm 90 "$auto" --kernel-cache "$work/cache-autotune" bench train configs/fashion_edm.toml "${timing[@]}"
# The faster build by steady-state images/s (the warm runs', else the cold ones').
fast=$noauto fast_cache=$work/cache-noauto
a=$(images_per_s "$log/a_warm.out"); [ "$a" = 0 ] && a=$(images_per_s "$log/a_cold.out")
b=$(images_per_s "$log/b_warm.out"); [ "$b" = 0 ] && b=$(images_per_s "$log/b_cold.out")
if "$py" -c "import sys; sys.exit(0 if float('$b') > float('$a') else 1)"; then fast=$auto fast_cache=$work/cache-autotune; fi
echo "{\"faster_build\": \"$(basename "$fast")\", \"noauto_images_per_s\": $a, \"autotune_images_per_s\": $b}" >"$log/faster.json"
stage cifar 180 "$fast" --kernel-cache "$fast_cache" bench train configs/cifar.toml "${timing[@]}" "${cifar_sets[@]}"
stage torch_cifar 120 "${torch[@]}" configs/cifar.toml --mode eager "${timing[@]}" "${cifar_sets[@]}"
if [ -f "$fid_weights" ]; then
    stage fid 120 "$noauto" --kernel-cache "$work/cache-noauto" bench fid --device "$device" --n "${FID_N:-2100}" --batch "${FID_BATCH:-100}" --weights "$fid_weights" --json
fi
stage assign 60 "$noauto" --kernel-cache "$work/cache-noauto" bench assign --batch 128,1024,4096 --dim 3072 --repeats 3 --device "$device"
stage compile_fashion 150 "${torch[@]}" configs/fashion_edm.toml --mode compile "${timing[@]}"
stage compile_cifar 180 "${torch[@]}" configs/cifar.toml --mode compile "${timing[@]}" "${cifar_sets[@]}"

"$py" scripts/gpu_summary.py "$log" "$out" >&2
tar -C "$work" -cJf "$out/logs.tar.xz" logs
tar -C "$work" -cJf "$out/kernel-cache.tar.xz" $(cd "$work" && ls -d cache-* 2>/dev/null)
ls -la "$out" >&2
