#!/usr/bin/env bash
# bench/gpu.sh [--out DIR]: the trainer benchmark on an NVIDIA GPU, native TensorFlow (the CUDA 12
# build of `npm run native -- --gpu`) beside PyTorch on CUDA, from a checkout, in about ten
# minutes on a machine that reaches the package registries (most of it is downloading wheels):
#   1. stops at once unless nvidia-smi shows a GPU and a driver new enough for both builds;
#   2. npm ci, npm run native -- --gpu, scripts/python-env.sh (torch 2.15.0 with its CUDA
#      libraries; $PYTHON instead when set);
#   3. proves that TensorFlow computes on the GPU: the binding's isUsingGpuDevice(), and
#      TensorFlow's own log of the GPU device it created and of the device each op executed on;
#      times a 4096^3 float32 matmul in both;
#   4. npm run bench -- --device gpu: tokens/s of each config in both, their ratio, and peak GPU
#      memory (torch's own peak allocation; nvidia-smi sampled per process for both).
# Both compute on GPU 0 in strict float32 (NVIDIA_TF32_OVERRIDE=0: TensorFlow would use TF32,
# PyTorch not), and TensorFlow allocates GPU memory as it needs it (TF_FORCE_GPU_ALLOW_GROWTH), so
# that the memory figures compare. Logs and the full JSON land in DIR (default out/gpu-bench).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=out/gpu-bench
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-bench: unknown option $1 (use --out DIR)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
log() { echo "gpu-bench: $*" >&2; }
die() { echo "gpu-bench: error: $*" >&2; exit 1; }
started=$SECONDS

# 1. A GPU, or nothing at all.
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi is not on PATH: this benchmark needs an NVIDIA GPU and its driver"
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i 0 2>&1)" \
  || die "nvidia-smi finds no GPU: $gpu"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0)"
[ "${driver%%.*}" -ge 525 ] || die "driver $driver is older than CUDA 12 (TensorFlow's build) needs: 525 or newer"
if [ -z "${PYTHON:-}" ] && [ "${driver%%.*}" -lt 580 ]; then
  die "driver $driver is older than CUDA 13 (torch 2.15.0's build) needs: 580 or newer; or set PYTHON to an interpreter whose torch is a CUDA 12 build"
fi
grep -Eq '^\s*device:\s*\{' bench/main.ts \
  || die "bench/main.ts has no --device option: the benchmark cannot run on a GPU from this checkout"
log "GPU 0: $gpu"

# 2. The installs; each step's own cache makes a second run quick.
npm ci --no-audit --no-fund >"$out/npm-ci.log" 2>&1 || { tail -n 20 "$out/npm-ci.log" >&2; die "npm ci failed"; }
npm run --silent native -- --gpu
python="${PYTHON:-$(bash scripts/python-env.sh)}"
log "installs done after $((SECONDS - started)) s; PyTorch from $python"
export NVIDIA_TF32_OVERRIDE=0 TF_FORCE_GPU_ALLOW_GROWTH=true CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"

# 3. The proof of placement, and the matmul rate of each.
TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=execute=1 node -e '
  const tf = require("@tensorflow/tfjs-node");
  const a = tf.randomUniform([4096, 4096]);
  const product = () => tf.tidy(() => tf.matMul(a, a).slice([0, 0], [1, 1]).dataSync());
  product();
  const started = performance.now();
  for (let i = 0; i < 10; i++) product();
  const gflops = (10 * 2 * 4096 ** 3) / ((performance.now() - started) / 1000) / 1e9;
  console.log(JSON.stringify({ backend: tf.getBackend(), isUsingGpuDevice: tf.backend().isUsingGpuDevice, gflops: Math.round(gflops) }));
' >"$out/placement.json" 2>"$out/placement.log" || { tail -n 20 "$out/placement.log" >&2; die "TensorFlow's GPU build did not run (log above)"; }
if grep -E 'Cannot dlopen some GPU libraries|Could not load dynamic library' "$out/placement.log" >&2; then
  die "TensorFlow could not load CUDA libraries (above); check node_modules/@tensorflow/tfjs-node/deps/nvidia"
fi
grep -q '"isUsingGpuDevice":true' "$out/placement.json" \
  || die "the binding's isUsingGpuDevice() is false: TensorFlow runs on the CPU (see $out/placement.log)"
created="$(grep -m 1 -o 'Created device /job:localhost/replica:0/task:0/device:GPU:0.*' "$out/placement.log")" \
  || die "TensorFlow logged no GPU device (see $out/placement.log)"
executed="$(grep -m 1 -oE 'Executing op (BatchMatMulV2|MatMul) in device /job:localhost/replica:0/task:0/device:GPU:0' "$out/placement.log")" \
  || die "TensorFlow logged no matmul on GPU:0 (see $out/placement.log)"
"$python" bench/reference_lora.py matmul --device cuda --size 4096 --repeats 10 >"$out/matmul-pytorch.json" \
  || die "PyTorch could not compute on the GPU (above)"

# 4. The benchmark, with nvidia-smi sampling each process's GPU memory four times a second.
nvidia-smi --query-compute-apps=process_name,used_memory --format=csv,noheader,nounits -lms 250 >"$out/gpu-memory.csv" 2>/dev/null &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
PYTHON="$python" npm run --silent bench -- --json --operator-jobs 0 --device gpu --backends tensorflow \
  >"$out/bench.json" 2>"$out/bench.log" || { tail -n 20 "$out/bench.log" >&2; die "npm run bench failed (log above)"; }
kill "$sampler" 2>/dev/null || true

peaks="$(awk -F', ' '{ name = $1; sub(/.*\//, "", name); if ($2 + 0 > peak[name]) peak[name] = $2 + 0 }
  END { for (name in peak) { printf "%s%s %d MiB", sep, name, peak[name]; sep = ", " } }' "$out/gpu-memory.csv")"
echo "GPU: $gpu"
echo "placement: isUsingGpuDevice() true; $created"
echo "placement: $executed"
compared=true
# shellcheck disable=SC2016 # JavaScript, not shell
node -e '
  const [placement, torch, bench] = process.argv.slice(1).map((file) => JSON.parse(require("fs").readFileSync(file, "utf8")));
  console.log(`matmul 4096^3 float32: TensorFlow ${placement.gflops} GFLOP/s, PyTorch ${Math.round(torch.gflops)} GFLOP/s`);
  for (const [name, config] of Object.entries(bench.configs)) {
    const tf = config.tensorflow ?? {}, pt = config.pytorch ?? {};
    if (!tf.tokensPerSecond || !pt.tokensPerSecond) { console.log(`${name}: not compared: ${tf.error ?? tf.unavailable ?? pt.error ?? pt.unavailable ?? config.error}`); process.exitCode = 1; continue; }
    if (tf.threads !== 0) { console.log(`${name}: error: TensorFlow computed on ${tf.description}, not on the GPU`); process.exitCode = 1; continue; }
    console.log(`${name}: TensorFlow on ${tf.description}: ${Math.round(tf.tokensPerSecond)} tokens/s; PyTorch ${pt.torch} on ${pt.gpu}: ${Math.round(pt.tokensPerSecond)} tokens/s; ratio ${(tf.tokensPerSecond / pt.tokensPerSecond).toFixed(2)}; PyTorch peak GPU allocation ${pt.peakGpuMemoryMiB} MiB; first-step loss ${tf.firstStepLoss} vs ${pt.firstStepLoss}`);
  }
' "$out/placement.json" "$out/matmul-pytorch.json" "$out/bench.json" || compared=false
echo "peak GPU memory per process (nvidia-smi): ${peaks:-none seen (nvidia-smi lists no processes inside some containers)}"
echo "done in $((SECONDS - started)) s; JSON and logs in $out"
$compared || die "not every config was compared on the GPU (above)"
