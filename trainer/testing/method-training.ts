import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { FineTuneJob } from "../../api/index.ts";
import { loadModel } from "../model/loader.ts";
import { mergeAdapter } from "../output/merge.ts";
import type { ProgressEvent } from "../train/progress.ts";
import { logitsOf, relativeError } from "./compare.ts";
import { TestFolderStore } from "./folder-store.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "./tiny-job.ts";

/**
 * The training checks every PEFT method passes (issue 11's "done when"), on the tiny job of
 * tiny-job.ts: the loss falls on a learnable task, and a run stopped and resumed from its
 * checkpoint ends with the same output files, byte for byte, as one that ran straight through.
 */
type Method = FineTuneJob["spec"]["method"];

const steps = (events: ProgressEvent[]) => events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");
const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;

/** First and last losses of a constant-learning-rate run of `maxSteps`. */
export async function lossesOfTinyRun(method: Method, options: { maxSteps?: number; learningRate?: number; family?: "llama" | "gpt2" } = {}): Promise<{ first: number; last: number; events: ProgressEvent[] }> {
  const job = await writeTinyJob({ family: options.family });
  try {
    const { result, events } = await runTinyJob(job, {
      method,
      hyperparameters: { maxSteps: options.maxSteps ?? 30, batchSize: 4, learningRate: options.learningRate ?? 0.01, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    if (result.status !== "completed") throw new Error(`expected the run to complete, got ${result.status}`);
    const losses = steps(events).map((event) => event.loss);
    return { first: mean(losses.slice(0, 3)), last: mean(losses.slice(-5)), events };
  } finally {
    await rm(job.dir, { recursive: true, force: true });
  }
}

export interface ResumeOptions {
  family?: "llama" | "gpt2";
  /** Changes to the job's hyperparameters (maxSteps 8, batchSize 2, gradientAccumulation 2, learningRate 0.01, ...). */
  hyperparameters?: Partial<NonNullable<FineTuneJob["spec"]["hyperparameters"]>>;
  /** Other spec fields, e.g. trainer.gradientCheckpointing. */
  spec?: Partial<FineTuneJob["spec"]>;
  /** The step after which the first attempt is stopped (default 4). */
  stopAtStep?: number;
}

/**
 * Runs the same stateful job (accumulation, eval, warmup, weight decay, checkpoints every 3
 * steps) straight through and stopped after `stopAtStep` then resumed; returns the output files
 * named in `files` of both, and the step the second attempt started from.
 */
export async function resumedAndStraightOutputs(method: Method, files: readonly string[], options: ResumeOptions = {}): Promise<{ straight: Buffer[]; resumed: Buffer[]; resumedFrom: number | undefined }> {
  const stopAtStep = options.stopAtStep ?? 4;
  const spec: Partial<FineTuneJob["spec"]> = {
    dataset: { train: "data/train.jsonl", format: "text", maxSeqLength: 32, evalFraction: 0.25 },
    method,
    hyperparameters: { maxSteps: 8, batchSize: 2, gradientAccumulation: 2, learningRate: 0.01, warmupSteps: 2, weightDecay: 0.01, evalEverySteps: 3, seed: 11, ...options.hyperparameters },
    checkpoint: { everySteps: 3, keep: 2 },
    ...options.spec,
  };
  const jobs: TinyJob[] = [await writeTinyJob({ family: options.family }), await writeTinyJob({ family: options.family })];
  try {
    const [straightJob, resumedJob] = jobs as [TinyJob, TinyJob];
    await runTinyJob(straightJob, spec);
    const controller = new AbortController();
    const first = await runTinyJob(resumedJob, spec, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === stopAtStep && controller.abort() });
    if (first.result.status !== "stopped") throw new Error(`expected the first attempt to stop at step ${stopAtStep}, got ${first.result.status}`);
    const second = await runTinyJob(resumedJob, spec);
    if (second.result.status !== "completed") throw new Error(`expected the resumed attempt to complete, got ${second.result.status}`);
    const start = second.events.find((event) => event.event === "start");
    const read = (job: TinyJob) => Promise.all(files.map((file) => readFile(path.join(job.dir, "out", file))));
    return { straight: await read(straightJob), resumed: await read(resumedJob), resumedFrom: start?.event === "start" ? start.step : undefined };
  } finally {
    for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
  }
}

/**
 * `kubetune merge` of the PEFT adapter in a fixture folder written by scripts/hf (adapter/,
 * model/, and logits.json with PEFT's own merged logits for its ids and mask), into a temporary
 * folder deleted afterwards: how many modules were merged, and the merged model's logits'
 * relative error against PEFT's.
 */
export async function mergedFixtureError(fixture: string): Promise<{ modules: number; error: number }> {
  const expected = JSON.parse(await readFile(path.join(fixture, "logits.json"), "utf8")) as { ids: number[][]; mask: number[][]; merged: number[] };
  const out = await mkdtemp(path.join(tmpdir(), "kubetune-merge-fixture-"));
  try {
    const result = await mergeAdapter({ adapter: new TestFolderStore(path.join(fixture, "adapter")), base: new TestFolderStore(path.join(fixture, "model")), out: new TestFolderStore(out) });
    const merged = await loadModel(new TestFolderStore(out));
    try {
      return { modules: result.modules.length, error: relativeError(logitsOf(merged, expected.ids, expected.mask), expected.merged) };
    } finally {
      merged.dispose();
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
}
