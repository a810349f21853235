import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "../testing/tiny-job.ts";
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
  }, 300_000);

  it("refuses full fine-tuning and a verdict of several tokens, naming the field", async () => {
    const job = await writeTinyJob({ lines: PROMPTS, spec: RLAIF });
    jobs.push(job);
    await expect(runTinyJob(job, { method: { type: "full" } })).rejects.toMatchObject({ reason: "InvalidSpec", message: expect.stringMatching(/dpo needs a reference model/) });
    const judge = { template: "{response}", verdictTokens: ["a b c", "b"] };
    await expect(runTinyJob(job, { objective: { ...RLAIF.objective, rlaif: { ...RLAIF.objective.rlaif, judge } } })).rejects.toMatchObject({
      reason: "InvalidSpec",
      message: expect.stringMatching(/spec\.objective\.rlaif\.judge\.verdictTokens\[0\]/),
    });
    await expect(runTinyJob(job, { dataset: { ...RLAIF.dataset, fields: { text: "question" } } })).rejects.toMatchObject({ reason: "InvalidDataset" });
  }, 300_000);
});
