import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "../testing/tiny-job.ts";
import { learningRateAt } from "../optim/schedule.ts";
import type { ProgressEvent } from "../train/progress.ts";
import type { RlaifPair } from "./rlaif.ts";

/** objective rlaif through runFineTuneJob: the spec's judge, the prompts file, the outputs and the refusals. */
const PROMPTS = ["The cat", "The dog", "Say hello", "The capital of France"].map((prompt) => ({ prompt }));
const RLAIF = {
  dataset: { train: "data/train.jsonl", format: "text" as const, maxSeqLength: 32 },
  objective: {
    type: "rlaif" as const,
    rlaif: { rounds: 2, samplesPerPrompt: 3, temperature: 1, topP: 1, maxNewTokens: 6, stepsPerRound: 2, judge: { template: "{prompt}{response} ok?", verdictTokens: ["a", "b"] } },
  },
};

const jobs: TinyJob[] = [];
beforeAll(async () => {
  await selectBackend("cpu");
});
afterAll(async () => {
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

describe("objective rlaif in a job", () => {
  it("trains rounds × stepsPerRound DPO steps on the judged pairs and publishes the audit files", async () => {
    const job = await writeTinyJob({ lines: PROMPTS, spec: RLAIF });
    jobs.push(job);
    const { result, events } = await runTinyJob(job, { hyperparameters: { batchSize: 2, learningRate: 0.01, seed: 3 } });
    expect(result.status).toBe("completed");
    if (result.status !== "completed") return;
    const steps = events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");
    expect(steps.map((event) => event.step)).toEqual([1, 2, 3, 4]);
    expect(steps.every((event) => event.totalSteps === 4 && event.preference !== undefined)).toBe(true);
    expect(result.outputs.files.map((file) => file.name)).toEqual(expect.arrayContaining(["adapter_model.safetensors", "rlaif/round-1.jsonl", "rlaif/round-2.jsonl"]));
    const pairs = (await readFile(path.join(job.dir, "out", "rlaif", "round-1.jsonl"), "utf8"))
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as RlaifPair);
    for (const pair of pairs) {
      expect(PROMPTS.map((p) => p.prompt)).toContain(pair.prompt);
      expect(pair.responses).toHaveLength(3);
      expect(pair.chosenScore).toBeGreaterThan(pair.rejectedScore);
    }
    expect(result.metrics.loss).toHaveLength(4);

    // The same output with other settings: its pairs files are another run's, refused rather than trained on.
    await expect(runTinyJob(job, { hyperparameters: { batchSize: 2, learningRate: 0.01, seed: 4 } })).rejects.toMatchObject({
      reason: "InvalidSpec",
      message: expect.stringMatching(/rlaif\/run\.json: the RLAIF rounds in this output were written by a job with other settings/),
    });
  }, 300_000);

  it("with full fine-tuning, trains each round against references precomputed from the policy at the round's start (iterative DPO)", async () => {
    const job = await writeTinyJob({ lines: PROMPTS, spec: RLAIF });
    jobs.push(job);
    const { result, events } = await runTinyJob(job, { method: { type: "full" }, hyperparameters: { batchSize: 2, learningRate: 0.001, scheduler: "constant", seed: 3 } });
    expect(result.status).toBe("completed");
    if (result.status !== "completed") return;
    const steps = events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");
    expect(steps.map((event) => event.step)).toEqual([1, 2, 3, 4]);
    // Each round's first step: the policy is the model its references came from, so every margin is 0;
    // the second step has moved it. Round 2's reference is round 1's result, not the base model.
    for (const first of [steps[0]!, steps[2]!]) expect(first.preference!.rewardsMargins).toBeCloseTo(0, 4);
    for (const second of [steps[1]!, steps[3]!]) expect(Math.abs(second.preference!.rewardsMargins)).toBeGreaterThan(1e-4);
    for (const round of [1, 2]) {
      const files = await readdir(path.join(job.dir, "out", `checkpoints-round-${round}`));
      expect(files.some((name) => name.startsWith("reference-logps-"))).toBe(true);
    }
    expect(result.outputs.files.map((file) => file.name)).toEqual(expect.arrayContaining(["model.safetensors", "rlaif/round-1.jsonl", "rlaif/round-2.jsonl"]));
  }, 300_000);

  for (const method of [
    { type: "prefix", prefix: { numVirtualTokens: 4 } },
    { type: "prompt", prompt: { numVirtualTokens: 3 } },
  ] as const) {
    it(`generates with ${method.type} tuning's virtual tokens in the cache and trains its pairs`, async () => {
      const job = await writeTinyJob({ lines: PROMPTS, spec: RLAIF });
      jobs.push(job);
      const { result, events } = await runTinyJob(job, { method, hyperparameters: { batchSize: 2, learningRate: 0.01, seed: 3 } });
      expect(result.status).toBe("completed");
      const steps = events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");
      expect(steps.map((event) => event.step)).toEqual([1, 2, 3, 4]);
      const pairs = (await readFile(path.join(job.dir, "out", "rlaif", "round-1.jsonl"), "utf8")).split("\n").filter(Boolean);
      expect(pairs.length).toBeGreaterThan(0);
    }, 300_000);
  }

  it("follows one learning-rate schedule over all rounds' steps", async () => {
    const job = await writeTinyJob({ lines: PROMPTS, spec: RLAIF });
    jobs.push(job);
    const objective = { ...RLAIF.objective, rlaif: { ...RLAIF.objective.rlaif, rounds: 2, stepsPerRound: 3 } };
    const { result, events } = await runTinyJob(job, { objective, hyperparameters: { batchSize: 2, learningRate: 0.01, scheduler: "linear", warmupSteps: 2, seed: 3 } });
    expect(result.status).toBe("completed");
    const steps = events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");
    const schedule = { type: "linear" as const, learningRate: 0.01, warmupSteps: 2, totalSteps: 6 };
    // Step k (1-based, over both rounds) takes the rate of 0-based step k − 1 of the one schedule: warmup once, decay to the end.
    expect(steps.map((event) => event.learningRate)).toEqual([0, 1, 2, 3, 4, 5].map((step) => learningRateAt(step, schedule)));
    expect(steps[3]!.learningRate).toBeLessThan(steps[2]!.learningRate);
  }, 300_000);

  it("refuses a verdict of several tokens, naming the field", async () => {
    const job = await writeTinyJob({ lines: PROMPTS, spec: RLAIF });
    jobs.push(job);
    const judge = { template: "{response}", verdictTokens: ["a b c", "b"] };
    await expect(runTinyJob(job, { objective: { ...RLAIF.objective, rlaif: { ...RLAIF.objective.rlaif, judge } } })).rejects.toMatchObject({
      reason: "InvalidSpec",
      message: expect.stringMatching(/spec\.objective\.rlaif\.judge\.verdictTokens\[0\]/),
    });
    await expect(runTinyJob(job, { dataset: { ...RLAIF.dataset, fields: { text: "question" } } })).rejects.toMatchObject({ reason: "InvalidDataset" });
  }, 300_000);
});
