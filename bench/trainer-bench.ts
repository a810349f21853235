// One measurement of the trainer benchmark, in a process of its own so that its peak RSS and
// its tfjs backend's heap are its alone. bench/main.ts runs it; it prints one JSON object (the
// figures, or {"error": ...}) as the last line of stdout and progress on stderr.
//
//   node --import tsx bench/trainer-bench.ts train --backend wasm|tensorflow --config small|0.5b --model DIR
//        [--threads N] [--warmup N] [--steps N] [--repeats N]
//   node --import tsx bench/trainer-bench.ts matmul --backend wasm|tensorflow [--threads N] [--size 2048] [--repeats 5]
//   node --import tsx bench/trainer-bench.ts write-model --config small|0.5b --out DIR
import { parseArgs } from "node:util";
import * as tf from "@tensorflow/tfjs-core";
import { LocalObjectStore } from "../storage/local-store.ts";
import { selectBackend, type BackendInfo } from "../trainer/backend/backend.ts";
import { loraMethod } from "../trainer/methods/lora/model.ts";
import { loadModel } from "../trainer/model/loader.ts";
import { AdamW } from "../trainer/optim/adamw.ts";
import { Rng } from "../trainer/random.ts";
import { trainStep } from "../trainer/train/step.ts";
import { BENCH_CONFIGS, benchTokenIds, isConfigName, type BenchConfig } from "./configs.ts";
import { writeModelFolder } from "./model-folder.ts";

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    backend: { type: "string" },
    config: { type: "string" },
    model: { type: "string" },
    out: { type: "string" },
    threads: { type: "string" },
    warmup: { type: "string" },
    steps: { type: "string" },
    repeats: { type: "string" },
    size: { type: "string", default: "2048" },
    // Activation recomputation (gradient checkpointing) in the training step.
    recompute: { type: "boolean", default: false },
    // gpu: native TensorFlow on a GPU (selectBackend("gpu"), which fails rather than fall back).
    device: { type: "string", default: "cpu" },
  },
});

const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
const peakRssMiB = () => mib(process.resourceUsage().maxRSS * 1024);
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const log = (line: string) => process.stderr.write(`bench: ${line}\n`);
/** What the task is doing, for an error message. */
let stage = "starting";

function required(name: keyof typeof args): string {
  const value = args[name];
  if (typeof value !== "string" || value === "") throw new Error(`--${name} is required`);
  return value;
}

function benchConfig(): BenchConfig {
  const name = required("config");
  if (!isConfigName(name)) throw new Error(`--config ${name}: use ${Object.keys(BENCH_CONFIGS).join(" or ")}`);
  return BENCH_CONFIGS[name];
}

/** Starts the backend named by --backend through the trainer's own selection, with --threads. */
async function startBackend(): Promise<BackendInfo> {
  const wanted = required("backend");
  if (wanted !== "wasm" && wanted !== "tensorflow") throw new Error(`--backend ${wanted}: use wasm or tensorflow`);
  process.env.KUBETUNE_BACKEND = wanted;
  if (args.threads) process.env.KUBETUNE_THREADS = args.threads;
  // "cpu" compares CPU backends (a GPU build computes on the CPU under it); "gpu" insists on one.
  const backend = await selectBackend(args.device === "gpu" ? "gpu" : "cpu");
  if (backend.name !== wanted) throw new Error(`asked for the ${wanted} backend, got ${backend.name} (${backend.reason})`);
  return backend;
}

function wasmHeapMiB(): number | undefined {
  const wasm = (tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } }).wasm;
  return wasm?.HEAPU8 ? mib(wasm.HEAPU8.buffer.byteLength) : undefined;
}

/**
 * float32 size x size matMul: the rate of the fastest of `repeats` products after one untimed.
 * The fastest, as this is the machine's peak rate; on a shared machine slower ones measure the
 * other work.
 */
async function matmul() {
  const backend = await startBackend();
  const size = Number(args.size);
  const repeats = Number(args.repeats ?? 5);
  const a = tf.randomUniform([size, size], -1, 1, "float32", 1) as tf.Tensor2D;
  const b = tf.randomUniform([size, size], -1, 1, "float32", 2) as tf.Tensor2D;
  const product = () => {
    const c = tf.matMul(a, b);
    // Reading one value waits for the product without copying all of it.
    tf.tidy(() => tf.slice(c, [0, 0], [1, 1]).dataSync());
    c.dispose();
  };
  product();
  const seconds: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const started = performance.now();
    product();
    seconds.push((performance.now() - started) / 1000);
  }
  return { backend: backend.name, threads: backend.threads, size, gflops: (2 * size ** 3) / Math.min(...seconds) / 1e9, seconds };
}

/** LoRA training steps of the model folder --model through the trainer's own loader and step. */
async function train() {
  const config = benchConfig();
  const backend = await startBackend();
  const warmup = Number(args.warmup ?? config.protocol.warmup);
  const steps = Number(args.steps ?? config.protocol.steps);
  const repeats = Number(args.repeats ?? config.protocol.repeats);

  stage = "loading the model";
  log(`${config.name} on ${backend.name} (${backend.description}): loading ${required("model")}`);
  const loadStarted = performance.now();
  const model = await loadModel(new LocalObjectStore(required("model")));
  const loadSeconds = (performance.now() - loadStarted) / 1000;
  const rssAfterLoadMiB = peakRssMiB();

  const rng = Rng.fromSeed(config.seed);
  const adapter = loraMethod.inject(model, config.lora, { rng, baseModelNameOrPath: required("model") });
  const optimizer = new AdamW([...adapter.trainableVariables()].map(([name, variable]) => ({ name, variable, decay: false })));
  const tokens = config.batchSize * config.seqLength;
  const ids = benchTokenIds(tokens, model.config.vocabSize);
  const batch = { rows: config.batchSize, seqLength: config.seqLength, inputIds: ids, attentionMask: new Int32Array(tokens).fill(1), labels: ids };
  const step = () => trainStep(adapter, [batch], { optimizer, learningRate: 1e-4, maxGradNorm: 1, gradientCheckpointing: args.recompute });

  stage = "training";
  const firstStarted = performance.now();
  const firstStepLoss = step().loss;
  const firstStepSeconds = (performance.now() - firstStarted) / 1000;
  for (let i = 1; i < warmup; i++) step();
  const runs: number[] = [];
  for (let repeat = 0; repeat < repeats; repeat++) {
    const started = performance.now();
    for (let i = 0; i < steps; i++) step();
    runs.push((tokens * steps) / ((performance.now() - started) / 1000));
    log(`${config.name} on ${backend.name}: run ${repeat + 1}/${repeats}: ${Math.round(runs.at(-1)!)} tokens/s`);
  }
  const heap = wasmHeapMiB();
  return {
    backend: backend.name,
    threads: backend.threads,
    description: backend.description,
    tokensPerSecond: median(runs),
    runs,
    stepSeconds: tokens / median(runs),
    firstStepSeconds,
    firstStepLoss,
    loadSeconds,
    trainableParameters: adapter.trainableParameterCount(),
    peakRssMiB: peakRssMiB(),
    rssAfterLoadMiB,
    ...(heap === undefined ? {} : { wasmHeapMiB: heap }),
    protocol: { warmup, steps, repeats },
  };
}

async function writeModel() {
  const config = benchConfig();
  const started = performance.now();
  await writeModelFolder(config, required("out"));
  return { dir: required("out"), seconds: (performance.now() - started) / 1000 };
}

/** The wasm heap's size when it is near its 4 GiB maximum: then an error is most likely out of memory. */
function wasmMemoryHint(): string {
  const heap = tf.getBackend() === "wasm" ? wasmHeapMiB() : undefined;
  return heap !== undefined && heap > 3500 ? ` (the wasm heap had grown to ${heap} MiB of its 4096 MiB maximum: out of memory)` : "";
}

const tasks: Record<string, () => Promise<object>> = { train, matmul, "write-model": writeModel };
const task = tasks[positionals[0] ?? ""];
try {
  if (!task) throw new Error(`give a task: ${Object.keys(tasks).join(", ")}`);
  console.log(JSON.stringify(await task()));
  process.exit(0);
} catch (error) {
  const message = `${stage}: ${(error as Error).name}: ${(error as Error).message.split("\n")[0]}${wasmMemoryHint()}`;
  console.log(JSON.stringify({ error: message, peakRssMiB: peakRssMiB() }));
  process.exit(1);
}
