import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { selectBackend } from "../backend/backend.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "../testing/tiny-job.ts";
import type { ProgressEvent } from "../train/progress.ts";

/**
 * DPO end to end on the tiny job: a synthetic preference set where the chosen completion is the
 * one that belongs to the prompt and the rejected one belongs to another prompt, so the model
 * can learn the preference from the prompt alone.
 */
const SENTENCES: Array<[string, string]> = [
  ["The cat", " sat on the mat."],
  ["The dog", " ran in the park."],
  ["The capital of France", " is Paris."],
  ["Translate to French: hello world.", " Bonjour le monde."],
  ["Answer the question.", " Good answers are short and true."],
  ["Say hello", " to the world."],
];

/** Every prompt with its own completion chosen and each other completion rejected. */
const PAIRS = SENTENCES.flatMap(([prompt, chosen], i) =>
  SENTENCES.filter((_, j) => j !== i).map(([, rejected]) => ({ prompt, chosen, rejected })),
);

const DPO_SPEC: Partial<FineTuneJob["spec"]> = {
  dataset: { train: "data/train.jsonl", format: "preference", maxSeqLength: 32 },
  objective: { type: "dpo", dpo: { beta: 0.5 } },
  method: { type: "lora", lora: { r: 8, alpha: 16, targetModules: ["all-linear"] } },
};

const steps = (events: ProgressEvent[]) => events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");
const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;

const jobs: TinyJob[] = [];
beforeAll(async () => {
  await selectBackend("cpu");
});
afterAll(async () => {
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

async function tinyDpoJob(): Promise<TinyJob> {
  const job = await writeTinyJob({ lines: PAIRS, spec: DPO_SPEC });
  jobs.push(job);
  return job;
}

describe("DPO training", () => {
  it("raises rewards/accuracies above 0.9 on a synthetic preference set, and reports TRL's metrics", async () => {
    const job = await tinyDpoJob();
    const { result, events } = await runTinyJob(job, {
      hyperparameters: { maxSteps: 40, batchSize: 10, learningRate: 0.01, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    expect(result.status).toBe("completed");
    const preference = steps(events).map((event) => event.preference!);
    expect(preference).toHaveLength(40);
    // The adapter starts as the identity (LoRA's B is zero): policy = reference, every margin 0.
    expect(preference[0]!.rewardsMargins).toBe(0);
    expect(preference[0]!.rewardsAccuracies).toBe(0);
    expect(steps(events)[0]!.loss).toBeCloseTo(Math.log(2), 5);
    const last = preference.slice(-5);
    expect(mean(last.map((p) => p.rewardsAccuracies))).toBeGreaterThan(0.9);
    expect(mean(last.map((p) => p.rewardsMargins))).toBeGreaterThan(0);
    expect(mean(steps(events).slice(-5).map((event) => event.loss))).toBeLessThan(Math.log(2) / 2);
    for (const p of last) expect(p.rewardsMargins).toBeCloseTo(p.rewardsChosen - p.rewardsRejected, 4);

    const metrics = JSON.parse((await readFile(path.join(job.dir, "out", "training_metrics.json"))).toString());
    expect(metrics.preference).toEqual(preference.at(-1));
    expect(metrics.loss[0].preference).toEqual(preference[0]);
  });

  // The reference is each method's model with its adapter disabled (full fine-tuning's is precomputed, below).
  for (const method of [
    { type: "dora", dora: { r: 4, alpha: 8, targetModules: ["q_proj", "v_proj"] } },
    { type: "ia3" },
    { type: "adapter", adapter: { variant: "houlsby", bottleneckSize: 8 } },
    { type: "prefix", prefix: { numVirtualTokens: 4 } },
    { type: "prompt", prompt: { numVirtualTokens: 4 } },
  ] as Array<FineTuneJob["spec"]["method"]>) {
    it(`trains a ${method.type} adapter against its disabled self`, async () => {
      const job = await tinyDpoJob();
      const { result, events } = await runTinyJob(job, {
        method,
        hyperparameters: { maxSteps: 3, batchSize: 6, learningRate: 0.01, seed: 7 },
        checkpoint: { everySteps: 1000 },
      });
      expect(result.status).toBe("completed");
      const losses = steps(events).map((event) => event.loss);
      expect(losses).toHaveLength(3);
      for (const loss of losses) expect(Number.isFinite(loss) && loss > 0).toBe(true);
      // The first update moves the policy away from the reference: the margins are no longer all 0.
      expect(steps(events)[2]!.preference!.rewardsMargins).not.toBe(0);
    });
  }

  it("keeps the number of live tensors flat from step to step, with accumulation and evaluation", async () => {
    const job = await tinyDpoJob();
    const counts: number[] = [];
    await runTinyJob(
      job,
      {
        dataset: { ...DPO_SPEC.dataset!, evalFraction: 0.2 },
        hyperparameters: { maxSteps: 6, batchSize: 3, gradientAccumulation: 2, learningRate: 0.01, evalEverySteps: 2, seed: 3 },
        checkpoint: { everySteps: 1000 },
      },
      { onProgress: (event) => event.event === "step" && counts.push(tf.memory().numTensors) },
    );
    expect(counts).toHaveLength(6);
    expect(new Set(counts.slice(1)).size).toBe(1);
  });

  it("trains full fine-tuning against reference log-probabilities precomputed before the first step, raising rewards/accuracies above 0.9", async () => {
    const job = await tinyDpoJob();
    const { result, events } = await runTinyJob(job, {
      method: { type: "full" },
      hyperparameters: { maxSteps: 30, batchSize: 10, learningRate: 0.001, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    expect(result.status).toBe("completed");
    const preference = steps(events).map((event) => event.preference!);
    expect(preference).toHaveLength(30);
    // Before the first update the policy is the model the references came from: every margin 0.
    expect(preference[0]!.rewardsMargins).toBeCloseTo(0, 4);
    expect(steps(events)[0]!.loss).toBeCloseTo(Math.log(2), 4);
    const last = preference.slice(-5);
    expect(mean(last.map((p) => p.rewardsAccuracies))).toBeGreaterThan(0.9);
    expect(mean(last.map((p) => p.rewardsMargins))).toBeGreaterThan(0);
    // The references stay the initial model's: the chosen completions' log-probabilities rise above them.
    expect(mean(last.map((p) => p.rewardsChosen - p.rewardsRejected))).toBeGreaterThan(0);
    // The references are stored beside the checkpoints, one value per distinct row.
    const checkpoints = await readdir(path.join(job.dir, "out", "checkpoints"));
    const referenceFile = checkpoints.find((name) => name.startsWith("reference-logps-"));
    expect(referenceFile).toBeDefined();
    const stored = JSON.parse(await readFile(path.join(job.dir, "out", "checkpoints", referenceFile!), "utf8")) as { logps: Record<string, number> };
    // 6 prompts × (1 own + 5 other completions): 36 distinct rows, each a chosen or a rejected one.
    expect(Object.keys(stored.logps)).toHaveLength(36);
    expect(Object.values(stored.logps).every((value) => Number.isFinite(value) && value < 0)).toBe(true);
  }, 300_000);

  it("continues a stopped full fine-tuning DPO run to the same model and metrics, byte for byte, with the stored references", async () => {
    const spec: Partial<FineTuneJob["spec"]> = {
      ...DPO_SPEC,
      dataset: { ...DPO_SPEC.dataset!, evalFraction: 0.2 },
      method: { type: "full" },
      objective: { type: "dpo", dpo: { beta: 0.1, labelSmoothing: 0.1 } },
      hyperparameters: { maxSteps: 6, batchSize: 2, gradientAccumulation: 2, learningRate: 0.001, warmupSteps: 2, weightDecay: 0.01, evalEverySteps: 3, seed: 11 },
      checkpoint: { everySteps: 2, keep: 2 },
    };
    const straight = await tinyDpoJob();
    await runTinyJob(straight, spec);
    const resumed = await tinyDpoJob();
    const controller = new AbortController();
    const first = await runTinyJob(resumed, spec, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 3 && controller.abort() });
    expect(first.result).toMatchObject({ status: "stopped", step: 3 });
    const second = await runTinyJob(resumed, spec);
    expect(second.events.find((event) => event.event === "start")).toMatchObject({ step: 3 });

    // Recomputed references (from the trained weights) would change every later loss and weight.
    const read = (job: TinyJob, file: string) => readFile(path.join(job.dir, "out", file));
    expect(await read(resumed, "model.safetensors")).toEqual(await read(straight, "model.safetensors"));
    const metrics = async (job: TinyJob) => JSON.parse((await read(job, "training_metrics.json")).toString());
    const [a, b] = [await metrics(straight), await metrics(resumed)];
    expect(b.loss).toEqual(a.loss);
    expect(b.eval).toEqual(a.eval);
    expect(b.eval.length).toBeGreaterThan(0);
  }, 300_000);

  it("refuses to resume a full fine-tuning DPO run whose stored references are gone, rather than recompute them from trained weights", async () => {
    const job = await tinyDpoJob();
    const spec: Partial<FineTuneJob["spec"]> = { method: { type: "full" }, hyperparameters: { maxSteps: 3, batchSize: 6, learningRate: 0.001, seed: 7 }, checkpoint: { everySteps: 1 } };
    const controller = new AbortController();
    await runTinyJob(job, spec, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 1 && controller.abort() });
    const folder = path.join(job.dir, "out", "checkpoints");
    for (const name of await readdir(folder)) if (name.startsWith("reference-logps-")) await rm(path.join(folder, name));
    await expect(runTinyJob(job, spec)).rejects.toMatchObject({ reason: "InvalidSpec", message: expect.stringMatching(/reference log-probabilities of this DPO run \(full fine-tuning\) are missing/) });
  }, 300_000);

  it("continues a stopped DPO run from its checkpoint to the same adapter and metrics, byte for byte", async () => {
    const spec: Partial<FineTuneJob["spec"]> = {
      ...DPO_SPEC,
      dataset: { ...DPO_SPEC.dataset!, evalFraction: 0.2 },
      method: { type: "lora", lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj"] } },
      objective: { type: "dpo", dpo: { beta: 0.1, labelSmoothing: 0.1 } },
      hyperparameters: { maxSteps: 6, batchSize: 2, gradientAccumulation: 2, learningRate: 0.01, warmupSteps: 2, weightDecay: 0.01, evalEverySteps: 3, seed: 11 },
      checkpoint: { everySteps: 2, keep: 2 },
    };
    const straight = await tinyDpoJob();
    const straightRun = await runTinyJob(straight, spec);
    const resumed = await tinyDpoJob();
    const controller = new AbortController();
    const first = await runTinyJob(resumed, spec, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 3 && controller.abort() });
    expect(first.result).toMatchObject({ status: "stopped", step: 3 });
    const second = await runTinyJob(resumed, spec);
    expect(second.events.find((event) => event.event === "start")).toMatchObject({ step: 3 });

    const read = (job: TinyJob, file: string) => readFile(path.join(job.dir, "out", file));
    expect(await read(resumed, "adapter_model.safetensors")).toEqual(await read(straight, "adapter_model.safetensors"));
    const metrics = async (job: TinyJob) => JSON.parse((await read(job, "training_metrics.json")).toString());
    const [a, b] = [await metrics(straight), await metrics(resumed)];
    expect(b.loss).toEqual(a.loss);
    expect(b.eval).toEqual(a.eval);
    // Evaluation reports the DPO loss and its metrics, and no perplexity.
    const evals = straightRun.events.filter((event) => event.event === "eval");
    expect(evals.length).toBeGreaterThan(0);
    expect(evals[0]).toMatchObject({ evalPerplexity: null, evalPreference: { rewardsAccuracies: expect.any(Number) } });
  });
});
