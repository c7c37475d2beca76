#!/usr/bin/env bash
# One prepared GPU window: how fast CUDA training starts and runs, against PyTorch on the same GPU.
#
# On the GPU machine (no Rust there), from the repository root, with .gpu/ carried (made here by
# scripts/gpu_build.sh: two stripped CUDA binaries, without and with autotune, and the Inception
# layout for timing-only weights):
#
#   scripts/gpu_check.sh [OUT]        OUT: where the results go (default $OUT, else gpu-check)
#
# Stages, each under its own time limit and all within BUDGET seconds (default 540, of which the
# last 40 pack the results), in this order (STAGES="a_cold …" runs a subset, e.g. the rest in a
# second call; a call that runs a_cold or b_cold starts that build's kernel cache empty):
#   a_cold        bench train fashion_edm.toml, no-autotune build, empty kernel cache
#   torch_fashion scripts/torch_reference.py fashion_edm.toml, eager
#   a_warm        a_cold again: compiled kernels from the cache
#   peers         train fashion_edm.toml as two data-parallel peers on GPU 0 (--devices cuda:0,cuda:0):
#                 Burn's collective on the GPU, 10 steps; its log has the all-reduce ms per step
#   nodes         the same as two nodes (two processes on GPU 0, --nodes 2 through Burn's global
#                 orchestrator on 127.0.0.1:29500): the multi-node all-reduce on the GPU
#   cifar         bench train cifar.toml, train.micro_batch=0, no-autotune build
#   torch_cifar   torch_reference.py cifar.toml, eager, micro_batch=0
#   fid           bench fid --device cuda (timing-only random Inception weights)
#   assign        bench assign --device cuda
#   b_cold        bench train fashion_edm.toml, autotune build, empty kernel cache
#   b_warm        b_cold again: autotune results and compiled kernels from the cache
#   cifar_auto    cifar with the autotune build, when its fashion_edm images/s beat the other's
#   compile_fashion, compile_cifar   torch_reference.py --mode compile
# CIFAR-10 is not on the machine: both sides train on the same random CIFAR-format files.
# Results (at most 8 files come back): summary.json and summary.md (figures, ratios, targets),
# logs.tar.xz (every stage's output), kernel-cache*.tar.xz (both cache folders, in parts of at
# most 15 MiB: carry them back to reuse on the same GPU model with the same binaries). Exit
# status 1 when no summary could be written or the first stage failed.
#
# From the session: the `run` tool with carry [".gpu"] and timeout_s 600, command
#   scripts/gpu_check.sh
# A CPU rehearsal: DEVICE=cpu BIN_NOAUTO=… BIN_AUTO=… PYTHON=… EXTRA_SETS="train.batch_size=4"
# STEPS=8 WARMUP=1 WINDOW=3 FID_N=8 FID_BATCH=4 scripts/gpu_check.sh /tmp/out
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
budget=${BUDGET:-540}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
steps=${STEPS:-41} warmup=${WARMUP:-5} window=${WINDOW:-5}
stages=${STAGES:-a_cold torch_fashion a_warm peers nodes cifar torch_cifar fid assign b_cold b_warm cifar_auto compile_fashion compile_cifar}
work=${WORK:-/tmp/emulsion-gpu-check}
started=$(date +%s)
log=$work/logs
rm -rf "$log"
case " $stages " in *" a_cold "*) rm -rf "$work/cache-noauto" ;; esac
case " $stages " in *" b_cold "*) rm -rf "$work/cache-autotune" ;; esac
mkdir -p "$out" "$log"

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
# min(LIMIT, what is left of the budget before packing); one line of stages.jsonl says how it ended.
stage() {
    local name=$1 limit=$2
    shift 2
    case " $stages " in *" $name "*) ;; *) return 0 ;; esac
    local left=$((budget - ($(date +%s) - started) - 40))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        echo "{\"stage\": \"$name\", \"status\": \"skipped: out of budget\"}" >>"$log/stages.jsonl"
        return 1
    fi
    echo "== $name (limit ${limit}s): $*" >&2
    local t0=$(date +%s%N)
    timeout -k 10 "$limit" "$@" >"$log/$name.out" 2>"$log/$name.log"
    local rc=$?
    local ms=$((($(date +%s%N) - t0) / 1000000))
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((ms / 1000)).$(printf %03d $((ms % 1000))), \"limit\": $limit}" >>"$log/stages.jsonl"
    echo "   rc $rc after ${ms} ms" >&2
    return $rc
}
timing=(--device "$device" --steps "$steps" --warmup "$warmup" --window "$window" --json ${extra[@]+"${extra[@]}"})
torch=("$py" scripts/torch_reference.py)
images_per_s() { "$py" -c 'import json, sys; print(float(json.load(open(sys.argv[1]))["images_per_s"] or 0))' "$1" 2>/dev/null || echo 0; }

stage a_cold 150 "$noauto" --kernel-cache "$work/cache-noauto" bench train configs/fashion_edm.toml "${timing[@]}"
stage torch_fashion 90 "${torch[@]}" configs/fashion_edm.toml --mode eager "${timing[@]}"
stage a_warm 60 "$noauto" --kernel-cache "$work/cache-noauto" bench train configs/fashion_edm.toml "${timing[@]}"
stage peers 90 "$noauto" --kernel-cache "$work/cache-noauto" train configs/fashion_edm.toml --devices "$device:0,$device:0" \
    --set run.out_dir="$work/runs" --set run.name=peers --set train.steps=10 --set train.checkpoint_every=10 \
    --set train.sample_every=0 --set sample.n=4 --set sample.steps=2 --overwrite
# Both nodes of a two-node run on this machine; node 1 runs in the background, node 0 is timed.
two_nodes() {
    local common=("$noauto" --kernel-cache "$work/cache-noauto" train configs/fashion_edm.toml --device "$device" --nodes 2
        --coordinator 127.0.0.1:29500 --set run.out_dir="$work/runs" --set run.name=nodes --set train.steps=10
        --set train.checkpoint_every=10 --set train.sample_every=0 --set sample.n=4 --set sample.steps=2
        --set distributed.timeout_s=60)
    "${common[@]}" --node-rank 1 >"$log/nodes-1.out" 2>"$log/nodes-1.log" &
    local node_1=$!
    "${common[@]}" --node-rank 0 --overwrite
    local rc=$?
    [ $rc -eq 0 ] || kill "$node_1" 2>/dev/null
    wait "$node_1" || rc=$?
    return $rc
}
export -f two_nodes
export noauto work device log
stage nodes 120 bash -c two_nodes
stage cifar 150 "$noauto" --kernel-cache "$work/cache-noauto" bench train configs/cifar.toml "${timing[@]}" "${cifar_sets[@]}"
stage torch_cifar 120 "${torch[@]}" configs/cifar.toml --mode eager "${timing[@]}" "${cifar_sets[@]}"
if [ -f "$fid_weights" ]; then
    stage fid 90 "$noauto" --kernel-cache "$work/cache-noauto" bench fid --device "$device" --n "${FID_N:-2100}" --batch "${FID_BATCH:-100}" --weights "$fid_weights" --json
fi
stage assign 60 "$noauto" --kernel-cache "$work/cache-noauto" bench assign --batch 128,1024,4096 --dim 3072 --repeats 3 --device "$device"
stage b_cold 150 "$auto" --kernel-cache "$work/cache-autotune" bench train configs/fashion_edm.toml "${timing[@]}" &&
    stage b_warm 60 "$auto" --kernel-cache "$work/cache-autotune" bench train configs/fashion_edm.toml "${timing[@]}"
# Which build trains fashion_edm faster (the warm runs', else the cold ones').
a=$(images_per_s "$log/a_warm.out"); [ "$a" = 0.0 ] && a=$(images_per_s "$log/a_cold.out")
b=$(images_per_s "$log/b_warm.out"); [ "$b" = 0.0 ] && b=$(images_per_s "$log/b_cold.out")
faster=emulsion-cuda
if "$py" -c "import sys; sys.exit(0 if $b > $a else 1)"; then
    faster=emulsion-cuda-autotune
    stage cifar_auto 150 "$auto" --kernel-cache "$work/cache-autotune" bench train configs/cifar.toml "${timing[@]}" "${cifar_sets[@]}"
fi
echo "{\"faster_build\": \"$faster\", \"noauto_images_per_s\": $a, \"autotune_images_per_s\": $b}" >"$log/faster.json"
stage compile_fashion 120 "${torch[@]}" configs/fashion_edm.toml --mode compile "${timing[@]}"
stage compile_cifar 150 "${torch[@]}" configs/cifar.toml --mode compile "${timing[@]}" "${cifar_sets[@]}"

"$py" scripts/gpu_summary.py "$log" "$out" >&2
status=$?
tar -C "$work" -cf - logs | xz -T0 -3 >"$out/logs.tar.xz"
# At most 15 MiB a file and 8 files come back: the caches in up to four parts, the drivers' JIT
# caches left out when that is not enough.
caches=$(cd "$work" && ls -d cache-* 2>/dev/null)
if [ -n "$caches" ]; then
    tar -C "$work" -cf - $caches | xz -T0 -3 >"$work/kernel-cache.tar.xz"
    if [ "$(stat -c %s "$work/kernel-cache.tar.xz")" -gt $((60 * 1024 * 1024)) ]; then
        echo "the kernel caches exceed 60 MiB packed: leaving the drivers' caches out" >&2
        tar -C "$work" --exclude=cuda-jit --exclude=mesa -cf - $caches | xz -T0 -3 >"$work/kernel-cache.tar.xz"
    fi
    split -b 15M -d -a 1 "$work/kernel-cache.tar.xz" "$out/kernel-cache.tar.xz.part"
fi
ls -la "$out" >&2
[ -s "$out/summary.json" ] && [ $status -eq 0 ] || exit 1
case " $stages " in *" a_cold "*) grep -q '"stage": "a_cold", "rc": 0,' "$log/stages.jsonl" || exit 1 ;; esac
