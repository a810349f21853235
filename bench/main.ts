// The trainer's benchmark (npm run bench -- [--json] [--backend auto|cpu] [--repeats N]):
// training steps (forward, backward, clipping, AdamW) of a fixed Llama-style LoRA config with
// random weights, timed in tfjs through the trainer's own step function, and the same step in
// PyTorch (bench/reference_lora.py) in the same run. Reports tokens per second for both (the
// median of the repeats), their ratio, and peak memory.
//
// The ratio compares like with like: tfjs's wasm backend computes on one thread in Node
// (TESTBED.md), so the reference runs PyTorch on one thread too; PyTorch on every core is
// reported beside it.
import { spawnSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import * as tf from "@tensorflow/tfjs-core";
import { selectBackend, type BackendPreference } from "../trainer/backend/backend.ts";
import { loraMethod } from "../trainer/methods/lora/model.ts";
import { parseModelConfig } from "../trainer/model/config.ts";
import { createModelFromStateDict, weightShapes } from "../trainer/model/loader.ts";
import { AdamW } from "../trainer/optim/adamw.ts";
import { Rng } from "../trainer/random.ts";
import type { TensorMap } from "../trainer/safetensors/safetensors.ts";
import { trainStep } from "../trainer/train/step.ts";
import { benchOperator } from "./operator.ts";

const { values: args } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    backend: { type: "string", default: "auto" },
    warmup: { type: "string", default: "2" },
    steps: { type: "string", default: "5" },
    repeats: { type: "string", default: "3" },
    python: { type: "string", default: process.env.PYTHON ?? "python3" },
    // The operator's benchmark (bench/operator.ts); 0 skips it.
    "operator-jobs": { type: "string", default: "1000" },
  },
});
const WARMUP = Number(args.warmup);
const STEPS = Number(args.steps);
const REPEATS = Number(args.repeats);

/** The fixed benchmark: a 4-layer Llama, hidden 256, 4 heads, vocab 4096; batch 8 x 128 tokens; LoRA r 8 on q_proj and v_proj. */
export const BENCH_CONFIG = {
  vocab_size: 4096,
  hidden_size: 256,
  // 8/3 of hidden, rounded up to a multiple of 16, as Llama sizes its MLP.
  intermediate_size: 688,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 128,
  batch_size: 8,
  seq_length: 128,
  lora_r: 8,
  lora_alpha: 16,
  seed: 0,
};

interface Figures {
  tokensPerSecond: number;
  runs: number[];
  peakRssMiB: number;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const mib = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10;

async function benchTfjs(): Promise<Figures & { backend: string; stepSeconds: number; trainableParameters: number; wasmHeapMiB?: number }> {
  const backend = await selectBackend(args.backend as BackendPreference);
  const c = BENCH_CONFIG;
  const config = parseModelConfig({ ...c, architectures: ["LlamaForCausalLM"], hidden_act: "silu", tie_word_embeddings: false });
  const rng = Rng.fromSeed(c.seed);
  const weights: TensorMap = new Map();
  for (const [name, shape] of weightShapes(config)) {
    const data = name.endsWith("norm.weight") ? new Float32Array(shape[0]!).fill(1) : rng.fillUniform(new Float32Array(shape.reduce((a, b) => a * b, 1)), -0.05, 0.05);
    weights.set(name, { shape, data });
  }
  const model = createModelFromStateDict(config, weights);
  const adapter = loraMethod.inject(model, { r: c.lora_r, alpha: c.lora_alpha, targetModules: ["q_proj", "v_proj"] }, { rng, baseModelNameOrPath: "bench" });
  const optimizer = new AdamW([...adapter.trainableVariables()].map(([name, variable]) => ({ name, variable, decay: false })));
  const tokens = c.batch_size * c.seq_length;
  const ids = Int32Array.from({ length: tokens }, () => rng.nextInt(c.vocab_size));
  const batch = { rows: c.batch_size, seqLength: c.seq_length, inputIds: ids, attentionMask: new Int32Array(tokens).fill(1), labels: ids };
  const step = () => trainStep(adapter, [batch], { optimizer, learningRate: 1e-4, maxGradNorm: 1 });

  for (let i = 0; i < WARMUP; i++) step();
  const runs: number[] = [];
  for (let repeat = 0; repeat < REPEATS; repeat++) {
    const started = performance.now();
    for (let i = 0; i < STEPS; i++) step();
    runs.push((tokens * STEPS) / ((performance.now() - started) / 1000));
  }
  const wasm = (tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } }).wasm;
  const result = {
    backend,
    tokensPerSecond: median(runs),
    runs,
    stepSeconds: tokens / median(runs),
    trainableParameters: adapter.trainableParameterCount(),
    peakRssMiB: mib(process.resourceUsage().maxRSS * 1024),
    ...(wasm?.HEAPU8 ? { wasmHeapMiB: mib(wasm.HEAPU8.buffer.byteLength) } : {}),
  };
  optimizer.dispose();
  adapter.remove();
  model.dispose();
  return result;
}

/** The PyTorch reference with `threads` threads, or why it could not run. */
function benchPytorch(threads: number): (Figures & { torch: string; threads: number }) | { unavailable: string } {
  const script = path.join(import.meta.dirname, "reference_lora.py");
  const run = spawnSync(
    args.python!,
    [script, "--config", JSON.stringify(BENCH_CONFIG), "--threads", String(threads), "--warmup", String(WARMUP), "--steps", String(STEPS), "--repeats", String(REPEATS)],
    { encoding: "utf8", timeout: 600_000 },
  );
  if (run.error) return { unavailable: `${args.python} could not be started (${run.error.message})` };
  if (run.status !== 0) {
    const missing = /No module named 'torch'/.test(run.stderr);
    return { unavailable: missing ? "PyTorch is not installed (pip install torch)" : `the reference failed: ${run.stderr.trim().split("\n").at(-1)}` };
  }
  return JSON.parse(run.stdout.trim().split("\n").at(-1)!);
}

// Interrupted: exit normally, so that the servers the operator benchmark started are stopped too.
for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(130));

const tfjs = await benchTfjs();
const pytorch = benchPytorch(1);
const pytorchAllCores = os.availableParallelism() > 1 ? benchPytorch(os.availableParallelism()) : undefined;
const ratio = "tokensPerSecond" in pytorch ? tfjs.tokensPerSecond / pytorch.tokensPerSecond : null;
const operatorJobs = Number(args["operator-jobs"]);
const operator = operatorJobs > 0 ? await benchOperator(operatorJobs) : undefined;
const report = {
  config: BENCH_CONFIG,
  protocol: { warmupSteps: WARMUP, timedSteps: STEPS, repeats: REPEATS, statistic: "median tokens/s of the repeats" },
  tfjs,
  pytorch,
  ...(pytorchAllCores ? { pytorchAllCores } : {}),
  ratio,
  ...("unavailable" in pytorch ? { note: `PyTorch reference skipped: ${pytorch.unavailable}; tfjs figures only` } : {}),
  ...(operator ? { operator } : {}),
};

if (args.json) {
  console.log(JSON.stringify(report));
} else {
  const rate = (value: number) => `${Math.round(value).toLocaleString("en-US")} tokens/s`;
  console.log(`tfjs (${tfjs.backend}): ${rate(tfjs.tokensPerSecond)}, ${tfjs.stepSeconds.toFixed(2)} s/step, peak RSS ${tfjs.peakRssMiB} MiB${tfjs.wasmHeapMiB ? `, wasm heap ${tfjs.wasmHeapMiB} MiB` : ""}`);
  if ("tokensPerSecond" in pytorch) {
    console.log(`PyTorch ${pytorch.torch} (${pytorch.threads} thread): ${rate(pytorch.tokensPerSecond)}, peak RSS ${Math.round(pytorch.peakRssMiB)} MiB`);
    if (pytorchAllCores && "tokensPerSecond" in pytorchAllCores) console.log(`PyTorch (${pytorchAllCores.threads} threads): ${rate(pytorchAllCores.tokensPerSecond)}`);
    console.log(`ratio tfjs / PyTorch (1 thread): ${ratio!.toFixed(3)}`);
  } else {
    console.log(`note: ${report.note}`);
  }
  if (operator) {
    console.log(
      `operator: ${operator.jobs} FineTuneJobs -> every trainer pod in ${operator.secondsUntilAllPods} s, ${operator.reconcilesPerSecond} reconciles/s, ` +
        `${operator.apiRequestsPerJob} API requests per job, peak RSS ${operator.operatorPeakRssMiB} MiB (kube-apiserver ${operator.kubeApiserver})`,
    );
  }
}
