// The benchmark: npm run bench -- [--json] [--configs small,0.5b] [--backends tensorflow,wasm]
//   [--warmup N] [--steps N] [--repeats N] [--python PATH] [--operator-jobs N] [--operator-repeats N]
//   [--operator-rss-jobs N]
//
// The trainer part times LoRA training steps (forward, backward, clipping, AdamW) of two models
// with random weights, written once as Hugging Face model folders (bench/model-folder.ts) and
// loaded through the trainer's own loader: "small" (a 4-layer Llama, batch 8 x 128) and "0.5b"
// (Qwen2.5-0.5B's shapes, batch 1 x 512); see bench/configs.ts. Every tfjs backend present
// (wasm always, tensorflow once `npm run native` built it) runs in a process of its own
// (bench/trainer-bench.ts), so its peak RSS is its own; PyTorch (bench/reference_lora.py, the
// interpreter of scripts/python-env.sh or $PYTHON) runs the same model from the same folder.
//
// Like is compared with like: each backend's ratio is to PyTorch on the same number of threads
// (wasm computes on one thread in Node; TensorFlow on every core), and PyTorch on every core is
// reported beside it. The same run measures the machine's float32 matmul rate (2048^3
// products, before and after the training runs, in PyTorch and in each backend), and reports
// each step's FLOPs (bench/configs.ts, STEP_FLOPS_FORMULA) per second as a share of it. The
// first step's loss of each backend is reported beside PyTorch's: the same weights and tokens
// must give the same loss.
//
// The operator part (bench/operator.ts; --operator-jobs 0 skips it) is reported as `operator`.
import { spawn } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { cpuThreads, findNativeBuild } from "../trainer/backend/backend.ts";
import { BENCH_CONFIGS, CONFIG_NAMES, isConfigName, STEP_FLOPS_FORMULA, stepFlops, type BenchConfig, type ConfigName } from "./configs.ts";
import { modelFolder, modelFolderExists } from "./model-folder.ts";
import { benchOperator } from "./operator.ts";

const BACKENDS = ["tensorflow", "wasm"] as const;
type Backend = (typeof BACKENDS)[number];

const { values: args } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    configs: { type: "string", default: CONFIG_NAMES.join(",") },
    backends: { type: "string", default: BACKENDS.join(",") },
    // Override every config's protocol (bench/configs.ts) when given.
    warmup: { type: "string" },
    steps: { type: "string" },
    repeats: { type: "string" },
    python: { type: "string", default: process.env.PYTHON },
    "matmul-size": { type: "string", default: "2048" },
    // gpu: native TensorFlow on the GPU against PyTorch on CUDA, nothing else (bench/gpu.sh).
    device: { type: "string", default: "cpu" },
    // The operator's benchmark (bench/operator.ts); 0 skips it. --operator-rss-jobs: the one
    // large run that measures the operator's peak RSS (0 skips it).
    "operator-jobs": { type: "string", default: "1000" },
    "operator-repeats": { type: "string", default: "3" },
    "operator-rss-jobs": { type: "string", default: "10000" },
  },
});

const root = path.dirname(import.meta.dirname);
const started = performance.now();
// Other work on the machine slows every run; the report says how busy it was.
const loadAverageAtStart = os.loadavg();
const log = (line: string) => process.stderr.write(`bench: ${line}\n`);
const round = (value: number, digits = 0) => Math.round(value * 10 ** digits) / 10 ** digits;

function pickList<T extends string>(flag: string, value: string, allowed: readonly T[]): T[] {
  const names = value.split(",").map((name) => name.trim()).filter(Boolean);
  const wrong = names.filter((name) => !allowed.includes(name as T));
  if (wrong.length > 0 || names.length === 0) {
    console.error(`bench: --${flag} ${value}: use a comma-separated list of ${allowed.join(", ")}`);
    process.exit(2);
  }
  return names as T[];
}
const configNames = pickList("configs", args.configs!, CONFIG_NAMES).filter(isConfigName);
const backendNames = pickList("backends", args.backends!, BACKENDS);

interface Failure {
  error: string;
}
interface Unavailable {
  unavailable: string;
}
type Outcome<T> = T | Failure | Unavailable;
const succeeded = <T extends object>(outcome: Outcome<T> | undefined): outcome is T =>
  outcome !== undefined && !("error" in outcome) && !("unavailable" in outcome);

interface TrainFigures {
  tokensPerSecond: number;
  stepSeconds: number;
  threads: number;
  firstStepLoss: number;
  peakRssMiB: number;
  [key: string]: unknown;
}
interface MatmulFigures {
  threads: number;
  gflops: number;
  [key: string]: unknown;
}

let running: ReturnType<typeof spawn> | undefined;
process.on("exit", () => running?.kill("SIGKILL"));
// Interrupted: exit normally, so that the child and the servers the operator benchmark started are stopped too.
for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(130));

/**
 * Runs a measurement process and takes the JSON object on the last line of its stdout. Its
 * stderr (progress, warnings) passes through; a process that dies without a JSON answer (an
 * abort when out of memory, a signal) becomes an error with its last stderr line.
 */
function runJson<T>(command: string, commandArgs: string[], options: { env?: NodeJS.ProcessEnv; timeoutSeconds: number }): Promise<T | Failure> {
  return new Promise((resolve) => {
    const child = spawn(command, commandArgs, { cwd: root, env: { ...process.env, ...options.env }, stdio: ["ignore", "pipe", "pipe"] });
    running = child;
    let stdout = "";
    let lastErrorLine = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => {
      process.stderr.write(chunk);
      const lines = chunk.toString().trim().split("\n").filter(Boolean);
      if (lines.length > 0) lastErrorLine = lines.at(-1)!;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutSeconds * 1000);
    child.on("error", (error) => resolve({ error: `${command} could not be started (${error.message})` }));
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      running = undefined;
      const last = stdout.trim().split("\n").at(-1) ?? "";
      try {
        resolve(JSON.parse(last) as T | Failure);
      } catch {
        const how = signal ? `was killed by ${signal}${signal === "SIGKILL" ? ` (over ${options.timeoutSeconds} s, or out of memory)` : ""}` : `exited with code ${code}`;
        resolve({ error: `${path.basename(commandArgs.find((arg) => arg.endsWith(".ts") || arg.endsWith(".py")) ?? command)} ${how}: ${lastErrorLine}` });
      }
    });
  });
}

const nodeScript = (task: string, options: string[]) => [process.execPath, ["--import", "tsx", "bench/trainer-bench.ts", task, ...options]] as const;

/** The interpreter for the PyTorch reference: --python / $PYTHON, else the venv of scripts/python-env.sh. */
async function findPython(): Promise<string | Unavailable> {
  if (args.python) return args.python;
  const check = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
    const child = spawn("bash", [path.join(root, "scripts", "python-env.sh"), "--check"], { stdio: ["ignore", "pipe", "ignore"] });
    let stdout = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.on("error", () => resolve({ code: 1, stdout: "" }));
    child.on("close", (code) => resolve({ code, stdout }));
  });
  if (check.code === 0 && check.stdout.trim()) return check.stdout.trim();
  return { unavailable: "no Python environment for the PyTorch reference: run scripts/python-env.sh once (or set PYTHON to an interpreter with torch and safetensors)" };
}

const python = await findPython();
// PyTorch's OpenMP threads otherwise spin while they wait for each other; with one more
// runnable process than cores (any shared machine) that made its 2-thread step 5 to 10 times
// slower than its 1-thread step here. Sleeping waiters cost a few percent on an idle machine.
const ompWaitPolicy = process.env.OMP_WAIT_POLICY ?? "PASSIVE";
const reference = (task: string, options: string[], threads: number) =>
  typeof python === "string"
    ? runJson<TrainFigures & MatmulFigures>(python, [path.join("bench", "reference_lora.py"), task, "--threads", String(threads), ...options], {
        timeoutSeconds: 1800,
        // One thread pool of the given size, not MKL's or OpenMP's own idea of the core count.
        env: { OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads), OMP_WAIT_POLICY: ompWaitPolicy },
      })
    : Promise.resolve(python);

const allCores = cpuThreads();
const native = findNativeBuild();
const backendThreads: Record<Backend, number> = { tensorflow: allCores, wasm: 1 };
const backendAbsent = (backend: Backend): Unavailable | undefined =>
  backend === "tensorflow" && !native ? { unavailable: "the native TensorFlow backend is not built (npm run native)" } : undefined;
const threadCounts = [...new Set([1, allCores])];
const matmulSize = args["matmul-size"]!;

interface MatmulRound {
  pytorch: Record<number, Outcome<MatmulFigures>>;
  backends: Partial<Record<Backend, Outcome<MatmulFigures>>>;
}

/** The machine's matmul rate on each thread count the comparisons use, by PyTorch and by each backend. */
async function measureMatmul(when: string): Promise<MatmulRound> {
  log(`matmul ${matmulSize}^3 float32 ${when}: PyTorch on ${threadCounts.join(" and ")} thread(s), then each backend`);
  const round: MatmulRound = { pytorch: {}, backends: {} };
  for (const threads of threadCounts) round.pytorch[threads] = await reference("matmul", ["--size", matmulSize, "--repeats", "5"], threads);
  for (const backend of backendNames) {
    const [command, commandArgs] = nodeScript("matmul", ["--backend", backend, "--threads", String(backendThreads[backend]), "--size", matmulSize]);
    round.backends[backend] = backendAbsent(backend) ?? (await runJson<MatmulFigures>(command, [...commandArgs], { timeoutSeconds: 300 }));
  }
  return round;
}

const protocolOverrides = [
  ...(args.warmup ? ["--warmup", args.warmup] : []),
  ...(args.steps ? ["--steps", args.steps] : []),
  ...(args.repeats ? ["--repeats", args.repeats] : []),
];

/** Writes the config's model folder unless the cache has it. */
async function ensureModel(config: BenchConfig): Promise<string | Failure> {
  const dir = modelFolder(config);
  if (modelFolderExists(dir)) return dir;
  log(`${config.name}: writing the model folder ${dir} (once; reused by later runs)`);
  const [command, commandArgs] = nodeScript("write-model", ["--config", config.name, "--out", dir]);
  const written = await runJson<{ dir: string }>(command, [...commandArgs], { timeoutSeconds: 900 });
  return "error" in written ? written : dir;
}

interface ConfigRuns {
  config: BenchConfig;
  error?: string;
  pytorch: Record<number, Outcome<TrainFigures>>;
  backends: Partial<Record<Backend, Outcome<TrainFigures>>>;
  seconds: number;
}

async function runConfig(config: BenchConfig): Promise<ConfigRuns> {
  const configStarted = performance.now();
  const runs: ConfigRuns = { config, pytorch: {}, backends: {}, seconds: 0 };
  const dir = await ensureModel(config);
  if (typeof dir !== "string") return { ...runs, error: dir.error };

  const settings = JSON.stringify({ batchSize: config.batchSize, seqLength: config.seqLength, lora: config.lora, seed: config.seed, recompute: config.recompute });
  const protocol = (key: "warmup" | "steps" | "repeats") => String(args[key] ?? config.protocol[key]);
  const referenceOptions = ["--model", dir, "--settings", settings, "--warmup", protocol("warmup"), "--steps", protocol("steps"), "--repeats", protocol("repeats")];
  // PyTorch and the backends alternate, so that a slow spell of a shared machine hits both.
  const order: Array<number | Backend> = [1, "wasm", allCores, "tensorflow"];
  for (const item of order) {
    if (typeof item === "number") {
      if (runs.pytorch[item] !== undefined) continue;
      log(`${config.name}: PyTorch on ${item} thread(s)`);
      runs.pytorch[item] = await reference("train", referenceOptions, item);
    } else if (backendNames.includes(item)) {
      const absent = backendAbsent(item);
      if (!absent) log(`${config.name}: ${item}`);
      const [command, commandArgs] = nodeScript("train", ["--backend", item, "--config", config.name, "--model", dir, "--threads", String(backendThreads[item]), ...(config.recompute ? ["--recompute"] : []), ...protocolOverrides]);
      runs.backends[item] = absent ?? (await runJson<TrainFigures>(command, [...commandArgs], { timeoutSeconds: 1800 }));
    }
  }
  return { ...runs, seconds: round((performance.now() - configStarted) / 1000) };
}

/** The fastest product on at most t threads, for each t (t threads can do what fewer do). */
function peakRates(rounds: MatmulRound[]): Record<number, number> {
  const figures = rounds.flatMap((one) => [...Object.values(one.pytorch), ...Object.values(one.backends)]).filter(succeeded);
  const peaks: Record<number, number> = {};
  for (const threads of threadCounts) {
    const rates = figures.filter((one) => one.threads <= threads).map((one) => one.gflops);
    if (rates.length > 0) peaks[threads] = Math.max(...rates);
  }
  return peaks;
}

/** A config's report: each run with its FLOP rate and shares, then the ratios to PyTorch. */
function summarize(runs: ConfigRuns, peaks: Record<number, number>) {
  const flops = stepFlops(runs.config);
  const withFlops = (figures: Outcome<TrainFigures> | undefined) => {
    if (!succeeded(figures)) return figures;
    const gflops = flops.total / figures.stepSeconds / 1e9;
    const sameThreads = peaks[figures.threads];
    const machine = peaks[allCores];
    return {
      ...figures,
      achievedGflops: round(gflops, 1),
      ...(sameThreads ? { flopShareSameThreads: round(gflops / sameThreads, 3) } : {}),
      ...(machine ? { flopShareMachine: round(gflops / machine, 3) } : {}),
    };
  };
  const ratios: Partial<Record<Backend, number>> = {};
  const ratiosToAllCores: Partial<Record<Backend, number>> = {};
  const firstStepLossDifference: Partial<Record<Backend, number>> = {};
  const pytorchAll = runs.pytorch[allCores];
  for (const [backend, figures] of Object.entries(runs.backends) as Array<[Backend, Outcome<TrainFigures>]>) {
    if (!succeeded(figures)) continue;
    const same = runs.pytorch[figures.threads];
    if (succeeded(same)) {
      ratios[backend] = round(figures.tokensPerSecond / same.tokensPerSecond, 3);
      firstStepLossDifference[backend] = Number((figures.firstStepLoss - same.firstStepLoss).toExponential(2));
    }
    if (succeeded(pytorchAll)) ratiosToAllCores[backend] = round(figures.tokensPerSecond / pytorchAll.tokensPerSecond, 3);
  }
  return {
    description: runs.config.description,
    model: modelFolder(runs.config),
    tokensPerStep: flops.tokens,
    stepFlops: flops,
    ...(runs.error ? { error: runs.error } : {}),
    ...Object.fromEntries(Object.entries(runs.backends).map(([backend, figures]) => [backend, withFlops(figures)])),
    pytorch: withFlops(runs.pytorch[1]),
    ...(allCores > 1 ? { pytorchAllCores: withFlops(pytorchAll) } : {}),
    ratios,
    ratiosToAllCores,
    firstStepLossDifference,
    seconds: runs.seconds,
  };
}

if (args.device === "gpu") {
  console.log(JSON.stringify(await benchOnGpu()));
  process.exit(0);
} else if (args.device !== "cpu") {
  console.error(`bench: --device ${args.device}: use cpu or gpu`);
  process.exit(2);
}

/**
 * On a GPU machine (bench/gpu.sh): each config once on native TensorFlow's GPU and once on
 * PyTorch CUDA, same model folder, same protocol; tokens/s, their ratio, first-step losses.
 */
async function benchOnGpu() {
  const configs: Record<string, unknown> = {};
  for (const name of configNames) {
    const config = BENCH_CONFIGS[name];
    const dir = await ensureModel(config);
    if (typeof dir !== "string") {
      configs[name] = { error: dir.error };
      continue;
    }
    const settings = JSON.stringify({ batchSize: config.batchSize, seqLength: config.seqLength, lora: config.lora, seed: config.seed, recompute: config.recompute });
    const protocol = (key: "warmup" | "steps" | "repeats") => String(args[key] ?? config.protocol[key]);
    log(`${name}: PyTorch on CUDA`);
    const pytorch = await reference("train", ["--device", "cuda", "--model", dir, "--settings", settings, "--warmup", protocol("warmup"), "--steps", protocol("steps"), "--repeats", protocol("repeats")], 1);
    log(`${name}: TensorFlow on the GPU`);
    const [command, commandArgs] = nodeScript("train", ["--backend", "tensorflow", "--device", "gpu", "--config", name, "--model", dir, ...(config.recompute ? ["--recompute"] : []), ...protocolOverrides]);
    const tensorflow = await runJson<TrainFigures>(command, [...commandArgs], { timeoutSeconds: 1800 });
    const ratio = succeeded(tensorflow) && succeeded(pytorch) ? round(tensorflow.tokensPerSecond / pytorch.tokensPerSecond, 3) : null;
    configs[name] = { description: config.description, tensorflow, pytorch, ratio };
  }
  return { device: "gpu", configs, seconds: round((performance.now() - started) / 1000) };
}

// The matmul rate is measured before and after the training runs, and the fastest counts: on a
// shared machine one measurement can fall in a busy spell.
const matmulBefore = await measureMatmul("before the training runs");
const configRuns: ConfigRuns[] = [];
for (const name of configNames) configRuns.push(await runConfig(BENCH_CONFIGS[name]));
const matmulAfter = await measureMatmul("after them");
const peaks = peakRates([matmulBefore, matmulAfter]);
const configs = Object.fromEntries(configRuns.map((runs) => [runs.config.name, summarize(runs, peaks)])) as Partial<Record<ConfigName, ReturnType<typeof summarize>>>;
const trainerSeconds = round((performance.now() - started) / 1000);

const operatorJobs = Number(args["operator-jobs"]);
const operator =
  operatorJobs > 0
    ? await benchOperator({ jobs: operatorJobs, repeats: Number(args["operator-repeats"]), rssJobs: Number(args["operator-rss-jobs"]), log: (line) => log(`operator: ${line}`) })
    : undefined;

const notes: string[] = [];
if (typeof python !== "string") notes.push(`PyTorch reference skipped, so nothing was compared: ${python.unavailable}`);
for (const backend of backendNames) {
  const absent = backendAbsent(backend);
  if (absent) notes.push(`${backend}: ${absent.unavailable}`);
}
const matmulRates = (one: MatmulRound) => ({
  pytorch: Object.fromEntries(Object.entries(one.pytorch).map(([threads, figures]) => [threads, succeeded(figures) ? round(figures.gflops, 1) : figures])),
  ...Object.fromEntries(Object.entries(one.backends).map(([backend, figures]) => [backend, succeeded(figures) ? { threads: figures.threads, gflops: round(figures.gflops, 1) } : figures])),
});
const report = {
  machine: {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? "unknown",
    allCoresThreads: allCores,
    node: process.version,
    loadAverageAtStart: loadAverageAtStart.map((value) => round(value, 2)),
    loadAverageAtEnd: os.loadavg().map((value) => round(value, 2)),
  },
  protocol: {
    statistic: "median tokens/s of the repeats; each repeat times `steps` steps after `warmup` untimed ones",
    byConfig: Object.fromEntries(
      configNames.map((name) => [
        name,
        {
          ...BENCH_CONFIGS[name].protocol,
          ...(args.warmup ? { warmup: Number(args.warmup) } : {}),
          ...(args.steps ? { steps: Number(args.steps) } : {}),
          ...(args.repeats ? { repeats: Number(args.repeats) } : {}),
        },
      ]),
    ),
    threads: { ...Object.fromEntries(backendNames.map((backend) => [backend, backendThreads[backend]])), pytorch: 1, pytorchAllCores: allCores },
    pytorchOmpWaitPolicy: ompWaitPolicy,
    ratios: "tokens/s of the backend over PyTorch's on the same number of threads; ratiosToAllCores: over PyTorch on every core",
    stepFlops: STEP_FLOPS_FORMULA,
    matmul:
      "float32 size^3 products by PyTorch and by each backend, before and after the training runs; gflops is the fastest of 5 (a peak rate); " +
      "peakGflopsByThreads[t] the fastest of all on at most t threads",
    flopShare:
      "stepFlops / stepSeconds over peakGflopsByThreads on the run's thread count (flopShareSameThreads) and on every core (flopShareMachine); " +
      "above 1 means other work on the machine slowed the matmul products more than the steps",
  },
  matmul: {
    size: Number(matmulSize),
    before: matmulRates(matmulBefore),
    after: matmulRates(matmulAfter),
    peakGflopsByThreads: Object.fromEntries(Object.entries(peaks).map(([threads, gflops]) => [threads, round(gflops, 1)])),
  },
  configs,
  trainerSeconds,
  ...(notes.length > 0 ? { notes } : {}),
  ...(operator ? { operator } : {}),
};

if (args.json) {
  console.log(JSON.stringify(report));
} else {
  printHuman();
}

function printHuman(): void {
  const rate = (value: number) => `${Math.round(value).toLocaleString("en-US")} tokens/s`;
  const line = (name: string, figures: Outcome<TrainFigures> | undefined, ratio?: string) => {
    if (figures === undefined) return;
    if ("error" in figures) return console.log(`  ${name}: error: ${figures.error}`);
    if ("unavailable" in figures) return console.log(`  ${name}: not run: ${figures.unavailable}`);
    const share = typeof figures.flopShareMachine === "number" ? `, ${Math.round(figures.flopShareMachine * 100)}% of the machine's matmul rate` : "";
    console.log(
      `  ${name} (${figures.threads} thread${figures.threads === 1 ? "" : "s"}): ${rate(figures.tokensPerSecond)}, ${figures.stepSeconds.toFixed(2)} s/step` +
        `${ratio ?? ""}, peak RSS ${Math.round(figures.peakRssMiB)} MiB${share}, first-step loss ${figures.firstStepLoss.toFixed(5)}`,
    );
  };
  const matmul = report.matmul;
  console.log(`matmul ${matmul.size}^3 float32, GFLOP/s by threads: ${Object.entries(matmul.peakGflopsByThreads).map(([threads, gflops]) => `${threads}: ${gflops}`).join(", ")}`);
  for (const [name, result] of Object.entries(configs)) {
    const figures = result as Record<string, unknown> & { ratios?: Record<string, number>; ratiosToAllCores?: Record<string, number> };
    console.log(`${name}: ${figures.description} (${round((figures.stepFlops as { total: number }).total / 1e9, 1)} GFLOP per step, ${figures.seconds ?? "?"} s)`);
    if (typeof figures.error === "string") console.log(`  error: ${figures.error}`);
    for (const backend of backendNames) {
      const ratio = figures.ratios?.[backend];
      const toAll = figures.ratiosToAllCores?.[backend];
      const ratioText = ratio === undefined ? "" : `, ratio to PyTorch on the same threads ${ratio.toFixed(2)}${toAll === undefined ? "" : ` (to PyTorch on all cores ${toAll.toFixed(2)})`}`;
      line(`tfjs ${backend}`, figures[backend] as Outcome<TrainFigures> | undefined, ratioText);
    }
    const pytorch = figures.pytorch as Outcome<TrainFigures> | undefined;
    line("PyTorch", pytorch);
    if (!(pytorch && "unavailable" in pytorch)) line("PyTorch", figures.pytorchAllCores as Outcome<TrainFigures> | undefined);
  }
  console.log(`trainer benchmark: ${trainerSeconds} s`);
  for (const note of notes) console.log(`note: ${note}`);
  if (operator) {
    const verbs = Object.entries(operator.apiRequestsByVerb).map(([verb, count]) => `${count} ${verb}`).join(", ");
    console.log(
      `operator (medians of ${operator.repeats}): ${operator.jobs} FineTuneJobs -> every trainer pod in ${operator.secondsUntilAllPods} s; ` +
        `floor (the same ${operator.concurrency} clients writing the same objects: ${operator.floorWrites}) ${operator.floorSeconds} s, ratio ${operator.ratioToFloor}; ` +
        `pods and status patches alone ${operator.floorPodsAndStatusSeconds} s (ratio ${operator.ratioToPodsAndStatusFloor}); ` +
        `issue 10's floor (Secrets, pods, status patches) ${operator.floorSecretsPodsAndStatusSeconds} s (ratio ${operator.ratioToSecretsPodsAndStatusFloor}); ` +
        `creating the jobs alone ${operator.jobCreateSeconds} s; ` +
        `${operator.apiWritesPerJob} API writes per job (${verbs}); peak RSS ${operator.operatorPeakRssMiB} MiB` +
        (operator.tenThousandJobs ? `; ${operator.tenThousandJobs.jobs} jobs: peak RSS ${operator.tenThousandJobs.operatorPeakRssMiB} MiB, every pod in ${operator.tenThousandJobs.secondsUntilAllPods} s` : "") +
        ` (kube-apiserver ${operator.kubeApiserver})`,
    );
  }
}
