import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import type { FineTuneJob } from "../../api/index.ts";
import type { ProgressEvent } from "../train/progress.ts";
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
    const { events } = await runTinyJob(job, {
      method,
      hyperparameters: { maxSteps: options.maxSteps ?? 30, batchSize: 4, learningRate: options.learningRate ?? 0.01, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    const losses = steps(events).map((event) => event.loss);
    return { first: mean(losses.slice(0, 3)), last: mean(losses.slice(-5)), events };
  } finally {
    await rm(job.dir, { recursive: true, force: true });
  }
}

/**
 * Runs the same stateful job (accumulation, eval, warmup, weight decay, checkpoints) straight
 * through and stopped at step 4 then resumed; returns the output files named in `files` of both.
 */
export async function resumedAndStraightOutputs(method: Method, files: readonly string[], family?: "llama" | "gpt2"): Promise<{ straight: Buffer[]; resumed: Buffer[]; resumedFrom: number | undefined }> {
  const spec: Partial<FineTuneJob["spec"]> = {
    dataset: { train: "data/train.jsonl", format: "text", maxSeqLength: 32, evalFraction: 0.25 },
    method,
    hyperparameters: { maxSteps: 8, batchSize: 2, gradientAccumulation: 2, learningRate: 0.01, warmupSteps: 2, weightDecay: 0.01, evalEverySteps: 3, seed: 11 },
    checkpoint: { everySteps: 3, keep: 2 },
  };
  const jobs: TinyJob[] = [await writeTinyJob({ family }), await writeTinyJob({ family })];
  try {
    const [straightJob, resumedJob] = jobs as [TinyJob, TinyJob];
    await runTinyJob(straightJob, spec);
    const controller = new AbortController();
    const first = await runTinyJob(resumedJob, spec, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 4 && controller.abort() });
    if (first.result.status !== "stopped") throw new Error(`expected the first attempt to stop at step 4, got ${first.result.status}`);
    const second = await runTinyJob(resumedJob, spec);
    const start = second.events.find((event) => event.event === "start");
    const read = (job: TinyJob) => Promise.all(files.map((file) => readFile(path.join(job.dir, "out", file))));
    return { straight: await read(straightJob), resumed: await read(resumedJob), resumedFrom: start?.event === "start" ? start.step : undefined };
  } finally {
    for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
  }
}
