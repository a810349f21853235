/**
 * npm run test:interop [-- examples/local/x.yaml ...]
 *
 * The live check that what kubetune trains behaves the same in Hugging Face (issue 9): for each
 * job in examples/local/*.yaml (one per method; a new method joins by adding its YAML), it
 *   1. trains with the real CLI: node bin/kubetune.mjs run <job> --output-dir out/interop/<name>
 *   2. writes the job's eval set as the trainer tokenizes and masks it (its own DataLoader)
 *   3. runs scripts/hf/interop.py, which loads the base model folder in transformers and the
 *      output by its kind (PEFT for adapters, transformers for merged or full models), checks
 *      that no key is missing or unexpected, and computes the eval loss with PyTorch
 *   4. checks PEFT's eval loss against training_metrics.json's final eval loss (within 1%), and
 *      transformers' base-model loss against the trainer's step-0 eval; for LoRA it also merges
 *      with `kubetune merge --max-shard-size` into several shards and loads them in transformers.
 * Outputs whose format PEFT has no loader for (e.g. bottleneck adapters) are reported as
 * skipped, with the reason. Exit status 0 only when every checked job agrees.
 *
 * Needs the Hugging Face venv (scripts/python-env.sh with both requirement files); without it,
 * it says how to make it and exits 2.
 */
import { spawnSync } from "node:child_process";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { applyDefaults } from "../../api/index.ts";
import { loadManifest } from "../../cli/commands/run.ts";
import { openStore } from "../../storage/open-store.ts";
import { resolveDatasetKeys } from "../../trainer/data/files.ts";
import { DataLoader } from "../../trainer/data/loader.ts";
import type { TrainingMetrics } from "../../trainer/output/metrics.ts";
import { loadTokenizer } from "../../trainer/tokenizer/tokenizer.ts";
import { planJob } from "../../trainer/train/plan.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const OUT = path.join(ROOT, "out", "interop");
/** Largest relative difference between the trainer's eval loss and PyTorch's. */
const TOLERANCE = 0.01;
/** Methods whose step 0 is the base model exactly, so its eval loss must equal transformers' base model. */
const STARTS_AS_BASE = new Set(["lora", "dora", "ia3", "adapter", "full"]);
const REQUIREMENTS = ["scripts/python-requirements.txt", "scripts/python-requirements-hf.txt"];

interface PythonReport {
  baseModel: { missingKeys: string[]; unexpectedKeys: string[]; mismatchedKeys: string[]; evalLoss: number };
  output:
    | { kind: "peft"; peftType: string; missingKeys: string[]; unexpectedKeys: string[]; valueMismatches: string[]; evalLoss: number }
    | { kind: "full"; missingKeys: string[]; unexpectedKeys: string[]; mismatchedKeys: string[]; evalLoss: number }
    | { kind: "skipped"; reason: string };
  merged: { folder: string; files: string[]; missingKeys: string[]; unexpectedKeys: string[]; mismatchedKeys: string[]; evalLoss: number }[];
  evalTokens: number;
}

interface Row {
  example: string;
  method: string;
  kind: string;
  trainerEval: number | null;
  hfEval: number | null;
  problems: string[];
  notes: string[];
}

function findPython(): string {
  const result = spawnSync("bash", [path.join(ROOT, "scripts/python-env.sh"), "--check", ...REQUIREMENTS.map((file) => path.join(ROOT, file))], { encoding: "utf8" });
  if (result.status !== 0) {
    console.error(
      "test:interop needs the Hugging Face Python venv (torch, transformers, peft), which is not made yet.\n" +
        `Make it once (about 3 GB of wheels):\n  bash scripts/python-env.sh ${REQUIREMENTS.join(" ")}\nthen run npm run test:interop again.`,
    );
    process.exit(2);
  }
  return result.stdout.trim();
}

async function jobFiles(args: string[]): Promise<string[]> {
  if (args.length > 0) return args.map((file) => path.resolve(file));
  const folder = path.join(ROOT, "examples", "local");
  const files = (await readdir(folder)).filter((name) => /\.ya?ml$/.test(name)).sort();
  if (files.length === 0) throw new Error(`no jobs in ${folder}; add one YAML per method`);
  return files.map((name) => path.join(folder, name));
}

function run(command: string, args: string[], what: string): string {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: "utf8", maxBuffer: 256 * 2 ** 20 });
  if (result.status !== 0) {
    throw new Error(`${what} failed (exit ${result.status ?? result.signal}):\n${(result.stderr || "").trim().split("\n").slice(-20).join("\n")}`);
  }
  return result.stdout;
}

/** The job's eval set exactly as the trainer feeds it to evaluate(): token ids, attention mask and labels per row. */
async function exportEvalSet(jobFile: string, target: string): Promise<{ modelDir: string; rows: number }> {
  const loaded = await loadManifest(jobFile);
  if ("problems" in loaded) throw new Error(loaded.problems.join("\n"));
  const spec = applyDefaults(loaded.job.spec);
  const plan = planJob(spec, { baseDir: path.dirname(jobFile) });
  const modelStore = openStore(plan.model.uri, plan.storage);
  const datasetStore = openStore(plan.dataset.storeUri, plan.storage);
  const tokenizer = await loadTokenizer(modelStore, "");
  const files = {
    store: datasetStore,
    train: await resolveDatasetKeys(datasetStore, plan.dataset.train),
    ...(plan.dataset.eval ? { eval: await resolveDatasetKeys(datasetStore, plan.dataset.eval) } : {}),
  };
  const data = new DataLoader(files, plan.dataset.options, tokenizer);
  if (!data.hasEval) throw new Error(`${jobFile}: the job has no eval set (set dataset.eval or dataset.evalFraction)`);
  // Batches as the trainer pads them (to each batch's longest row), one row per list.
  const batches: { inputIds: number[][]; attentionMask: number[][]; labels: number[][] }[] = [];
  let rows = 0;
  for await (const batch of data.evalBatches(plan.training.batchSize)) {
    if (batch.kind !== "lm") throw new Error(`${jobFile}: test:interop compares language-model losses; this job's format is ${plan.dataset.options.format}`);
    const { rows: count, seqLength, inputIds, attentionMask, labels } = batch.tokens;
    const split = (array: Int32Array): number[][] => Array.from({ length: count }, (_, row) => [...array.subarray(row * seqLength, (row + 1) * seqLength)]);
    batches.push({ inputIds: split(inputIds), attentionMask: split(attentionMask), labels: split(labels) });
    rows += count;
  }
  await writeFile(target, JSON.stringify({ batches }));
  const location = plan.model.uri.startsWith("file://") ? fileURLToPath(plan.model.uri) : plan.model.uri;
  if (location.startsWith("s3://")) throw new Error(`${jobFile}: baseModel.uri must be a local folder for test:interop (PyTorch reads it directly)`);
  return { modelDir: location, rows };
}

function percent(fraction: number): string {
  return `${(fraction * 100).toPrecision(2)}%`;
}

function relative(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
}

async function check(jobFile: string, python: string): Promise<Row> {
  const name = path.basename(jobFile).replace(/\.ya?ml$/, "");
  const outputDir = path.join(OUT, name);
  const row: Row = { example: path.relative(ROOT, jobFile), method: "?", kind: "?", trainerEval: null, hfEval: null, problems: [], notes: [] };
  await rm(outputDir, { recursive: true, force: true });
  await rm(`${outputDir}-merged-sharded`, { recursive: true, force: true });
  await mkdir(OUT, { recursive: true });

  console.error(`[${name}] training: node bin/kubetune.mjs run ${row.example} --output-dir ${path.relative(ROOT, outputDir)}`);
  run(process.execPath, ["bin/kubetune.mjs", "run", jobFile, "--output-dir", outputDir, "--json", "--no-sample"], `kubetune run ${row.example}`);
  const metrics = JSON.parse(await readFile(path.join(outputDir, "training_metrics.json"), "utf8")) as TrainingMetrics;
  row.method = metrics.method;
  if (metrics.preference !== undefined || metrics.evalAccuracy !== undefined) {
    // The eval loss of a DPO job is the DPO loss, not a next-token loss PyTorch could recompute
    // from the eval rows; trainer/objectives/dpo-hf.test.ts checks it against PyTorch and PEFT.
    row.kind = "skipped";
    row.notes.push(`skipped: objective ${metrics.evalAccuracy !== undefined ? "classification" : "dpo or reward"} (no next-token eval loss; DPO is checked against PyTorch and PEFT by trainer/objectives/dpo-hf.test.ts)`);
    return row;
  }
  const finalEval = metrics.eval.at(-1);
  const baseEval = metrics.eval[0];
  if (!finalEval || finalEval.step !== metrics.steps || !baseEval || baseEval.step !== 0) {
    row.problems.push(`training_metrics.json has no eval at step 0 and at the last step (${metrics.steps})`);
    return row;
  }
  row.trainerEval = finalEval.loss;

  const evalFile = path.join(OUT, `${name}.eval.json`);
  const { modelDir } = await exportEvalSet(jobFile, evalFile);
  const merged: string[] = [];
  if (await exists(path.join(outputDir, "merged", "config.json"))) merged.push(path.join(outputDir, "merged"));
  const adapterConfig = await readJson(path.join(outputDir, "adapter_config.json"));
  if (adapterConfig?.peft_type === "LORA" && adapterConfig.use_dora !== true) {
    // A merge into several shards, to load the sharded layout (and its index) in transformers.
    const shardSize = Math.ceil((metrics.totalParameters * 4) / 4);
    const sharded = `${outputDir}-merged-sharded`;
    run(process.execPath, ["bin/kubetune.mjs", "merge", outputDir, "--base", modelDir, "--out", sharded, "--max-shard-size", String(shardSize)], "kubetune merge");
    merged.push(sharded);
  }

  console.error(`[${name}] loading in transformers/PEFT and computing the eval loss`);
  const stdout = run(python, [path.join(ROOT, "scripts/hf/interop.py"), "--base", modelDir, "--output", outputDir, "--eval", evalFile, ...merged.flatMap((folder) => ["--merged", folder])], "interop.py");
  const report = JSON.parse(stdout.trim().split("\n").at(-1)!) as PythonReport;

  const keys = (what: string, lists: { missingKeys: string[]; unexpectedKeys: string[]; mismatchedKeys?: string[]; valueMismatches?: string[] }): void => {
    for (const [label, list] of [
      ["missing", lists.missingKeys],
      ["unexpected", lists.unexpectedKeys],
      ["shape-mismatched", lists.mismatchedKeys ?? []],
      ["value-mismatched", lists.valueMismatches ?? []],
    ] as const) {
      if (list.length > 0) row.problems.push(`${what}: ${list.length} ${label} keys (${list.slice(0, 5).join(", ")})`);
    }
  };
  keys("base model in transformers", report.baseModel);
  const output = report.output;
  // The trainer's step-0 eval is the base model's only for methods that start as the identity
  // (LoRA and DoRA with B = 0, IA3 with ones, bottleneck adapters with a zero up-projection,
  // full fine-tuning); prefix and prompt tuning start with their virtual tokens in place.
  const baseDiff = relative(report.baseModel.evalLoss, baseEval.loss);
  const startsAsBase = STARTS_AS_BASE.has(row.method);
  row.notes.push(
    `step 0: trainer ${baseEval.loss.toFixed(6)}, base model in transformers ${report.baseModel.evalLoss.toFixed(6)} ` +
      (startsAsBase ? `(difference ${percent(baseDiff)})` : "(not compared: this method does not start as the base model)"),
  );
  if (startsAsBase && baseDiff > TOLERANCE) row.problems.push(`base model eval loss differs by ${percent(baseDiff)}`);

  row.kind = output.kind === "peft" ? `PEFT ${output.peftType}` : output.kind;
  if (output.kind === "skipped") {
    row.notes.push(`skipped: ${output.reason}`);
  } else {
    keys(output.kind === "peft" ? "adapter in PEFT" : "model in transformers", output);
    row.hfEval = output.evalLoss;
    const diff = relative(output.evalLoss, finalEval.loss);
    if (diff > TOLERANCE) row.problems.push(`eval loss differs by ${percent(diff)} (tolerance ${TOLERANCE * 100}%)`);
  }
  for (const entry of report.merged) {
    keys(`merged ${path.relative(ROOT, entry.folder)}`, entry);
    const diff = relative(entry.evalLoss, finalEval.loss);
    const weightFiles = entry.files.filter((file) => file.endsWith(".safetensors")).length;
    row.notes.push(`merged ${path.relative(ROOT, entry.folder)} in transformers (${weightFiles} weight files): ${entry.evalLoss.toFixed(6)} (difference ${percent(diff)})`);
    if (diff > TOLERANCE) row.problems.push(`merged model ${entry.folder}: eval loss differs by ${percent(diff)}`);
  }
  row.notes.push(`${report.evalTokens} eval target tokens`);
  return row;
}

async function exists(file: string): Promise<boolean> {
  try {
    await readFile(file);
    return true;
  } catch {
    return false;
  }
}

async function readJson(file: string): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const python = findPython();
  const jobs = await jobFiles(process.argv.slice(2));
  const rows: Row[] = [];
  for (const job of jobs) {
    try {
      rows.push(await check(job, python));
    } catch (error) {
      rows.push({ example: path.relative(ROOT, job), method: "?", kind: "?", trainerEval: null, hfEval: null, problems: [(error as Error).message], notes: [] });
    }
  }
  const format = (value: number | null): string => (value === null ? "-" : value.toFixed(6));
  console.log("example | method | output | trainer eval loss | HF eval loss | difference | result");
  for (const row of rows) {
    const diff = row.trainerEval !== null && row.hfEval !== null ? percent(relative(row.hfEval, row.trainerEval)) : "-";
    const skipped = row.kind === "skipped";
    console.log(`${row.example} | ${row.method} | ${row.kind} | ${format(row.trainerEval)} | ${format(row.hfEval)} | ${diff} | ${row.problems.length > 0 ? "FAIL" : skipped ? "skipped" : "ok"}`);
    for (const note of row.notes) console.log(`    ${note}`);
    for (const problem of row.problems) console.log(`    problem: ${problem}`);
  }
  const failed = rows.filter((row) => row.problems.length > 0);
  if (failed.length > 0) {
    console.error(`${failed.length} of ${rows.length} jobs do not agree with Hugging Face`);
    process.exit(1);
  }
}

await main();
