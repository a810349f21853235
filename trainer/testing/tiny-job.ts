import { copyFile, mkdir, mkdtemp, readdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { applyDefaults, type FineTuneJob } from "../../api/index.ts";
import { runFineTuneJob, type RunJobOptions, type RunJobResult } from "../run.ts";
import type { ProgressEvent } from "../train/progress.ts";
import { testTokenizer, testTokenizerFiles } from "../tokenizer/test-tokenizer.ts";
import { TINY_GPT2, TINY_LLAMA, writeTinyModel } from "./tiny-models.ts";

/**
 * A whole FineTuneJob on disk for trainer tests: a tiny random Llama whose vocabulary is the
 * test tokenizer's, that tokenizer's files, a JSONL dataset, and a manifest using relative
 * paths, as a user's would.
 */
export interface TinyJob {
  /** The folder holding job.yaml's relative paths: model/, data/train.jsonl, out/. */
  dir: string;
  manifest: FineTuneJob;
  /** The manifest's path (JSON, which the CLI reads like YAML). */
  manifestPath: string;
}

/** Short sentences a tiny model memorises quickly: the "learnable synthetic task". */
export const SYNTHETIC_SENTENCES = [
  "The cat sat on the mat.",
  "The dog ran in the park.",
  "Hello, world!",
  "Good answers are short and true.",
  "The capital of France is Paris.",
  "Say hello to the world.",
];

export interface TinyJobOptions {
  /** Dataset lines: objects become JSON, strings are written as they are. Default: the sentences as text records. */
  lines?: unknown[];
  spec?: Partial<FineTuneJob["spec"]>;
  seed?: number;
  /** The tiny model's family: a Llama (default) or a GPT-2. */
  family?: "llama" | "gpt2";
}

export async function writeTinyJob(options: TinyJobOptions = {}): Promise<TinyJob> {
  const dir = await mkdtemp(path.join(tmpdir(), "kubetune-tiny-job-"));
  const shape = options.family === "gpt2" ? TINY_GPT2 : TINY_LLAMA;
  const tiny = await writeTinyModel({ ...shape, vocab_size: testTokenizer().vocabSize }, { seed: options.seed ?? 5 });
  const modelDir = path.join(dir, "model");
  await mkdir(modelDir, { recursive: true });
  for (const file of await readdir(tiny.dir)) await copyFile(path.join(tiny.dir, file), path.join(modelDir, file));
  const tokenizer = testTokenizerFiles();
  await writeFile(path.join(modelDir, "tokenizer.json"), JSON.stringify(tokenizer.tokenizerJson));
  await writeFile(path.join(modelDir, "tokenizer_config.json"), JSON.stringify(tokenizer.tokenizerConfig));

  const lines = options.lines ?? Array.from({ length: 24 }, (_, i) => ({ text: SYNTHETIC_SENTENCES[i % SYNTHETIC_SENTENCES.length] }));
  await mkdir(path.join(dir, "data"), { recursive: true });
  await writeFile(path.join(dir, "data", "train.jsonl"), lines.map((line) => (typeof line === "string" ? line : JSON.stringify(line))).join("\n") + "\n");

  const manifest: FineTuneJob = {
    apiVersion: "kubetune.io/v1alpha1",
    kind: "FineTuneJob",
    metadata: { name: "tiny" },
    spec: {
      baseModel: { uri: "model" },
      dataset: { train: "data/train.jsonl", format: "text", maxSeqLength: 32 },
      method: { type: "lora", lora: { r: 4, alpha: 8, targetModules: ["q_proj", "v_proj"] } },
      hyperparameters: { maxSteps: 6, batchSize: 4, learningRate: 0.01, seed: 7 },
      output: { uri: "out" },
      checkpoint: { everySteps: 2, keep: 2 },
      trainer: { backend: "cpu" },
      ...options.spec,
    },
  };
  const manifestPath = path.join(dir, "job.json");
  await writeFile(manifestPath, JSON.stringify(manifest, null, 2));
  return { dir, manifest, manifestPath };
}

/**
 * Runs a tiny job in this process (no sample), its spec overridden by `spec`, and collects every
 * progress event it reports.
 */
export async function runTinyJob(
  job: TinyJob,
  spec: Partial<FineTuneJob["spec"]> = {},
  options: RunJobOptions = {},
): Promise<{ result: RunJobResult; events: ProgressEvent[] }> {
  const events: ProgressEvent[] = [];
  const result = await runFineTuneJob(applyDefaults({ ...job.manifest.spec, ...spec }), {
    baseDir: job.dir,
    sample: false,
    ...options,
    onProgress: (event) => {
      events.push(event);
      options.onProgress?.(event);
    },
  });
  return { result, events };
}
