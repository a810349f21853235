import { readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { selectBackend } from "../backend/backend.ts";
import { readSafetensors } from "../safetensors/safetensors.ts";
import { TINY_LLAMA } from "../testing/tiny-models.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "../testing/tiny-job.ts";
import type { ProgressEvent } from "../train/progress.ts";

/**
 * Classification on the tiny job: a sentence about a cat, a dog or Paris, after one of a few
 * fillers, labelled by its subject. The held-out texts pair fillers and subjects the training
 * texts never pair up.
 */
const SUBJECTS: Array<[string, string]> = [
  ["The cat sat on the mat.", "cat"],
  ["The dog ran in the park.", "dog"],
  ["The capital of France is Paris.", "place"],
];
const FILLERS = [
  "Hello, world!",
  "Good answers are short and true.",
  "Say hello to the world.",
  "Answer the question.",
  "Bonjour le monde.",
  "Translate to French: hello world.",
  "Say hello.",
  "Good answers are short.",
  "Hello!",
];

const all = SUBJECTS.flatMap(([sentence, label], s) => FILLERS.map((filler, f) => ({ s, f, record: { text: `${filler} ${sentence}`, label } })));
const TRAIN = all.filter(({ s, f }) => (s + f) % 3 !== 0).map(({ record }) => record);
const HELD_OUT = all.filter(({ s, f }) => (s + f) % 3 === 0).map(({ record }) => record);

const jobs: TinyJob[] = [];
beforeAll(async () => {
  await selectBackend("cpu");
});
afterAll(async () => {
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

describe("a classifier", () => {
  it("classifies held-out texts above 0.9 accuracy, and exports its score head as PEFT's SEQ_CLS does", async () => {
    const spec: Partial<FineTuneJob["spec"]> = {
      dataset: { train: "data/train.jsonl", eval: "data/eval.jsonl", format: "classification", labels: ["cat", "dog", "place"], maxSeqLength: 32 },
      objective: { type: "classification" },
      method: { type: "lora", lora: { r: 8, alpha: 16, targetModules: ["all-linear"] } },
    };
    const job = await writeTinyJob({ lines: TRAIN, spec });
    jobs.push(job);
    await writeFile(path.join(job.dir, "data", "eval.jsonl"), HELD_OUT.map((line) => JSON.stringify(line)).join("\n") + "\n");
    const { result, events } = await runTinyJob(job, {
      hyperparameters: { maxSteps: 60, batchSize: 6, learningRate: 0.01, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    expect(result.status).toBe("completed");
    const evals = events.filter((event): event is Extract<ProgressEvent, { event: "eval" }> => event.event === "eval");
    expect(evals[0]!.evalAccuracy).toBeLessThan(0.6);
    expect(evals.at(-1)!.evalAccuracy).toBeGreaterThan(0.9);
    const out = path.join(job.dir, "out");
    const metrics = JSON.parse(await readFile(path.join(out, "training_metrics.json"), "utf8")) as { evalAccuracy: number };
    expect(metrics.evalAccuracy).toBe(evals.at(-1)!.evalAccuracy);
    const config = JSON.parse(await readFile(path.join(out, "adapter_config.json"), "utf8")) as Record<string, unknown>;
    expect(config).toMatchObject({ task_type: "SEQ_CLS", modules_to_save: ["classifier", "score"] });
    const file = path.join(out, "adapter_model.safetensors");
    expect(readSafetensors(await readFile(file), file).tensors.get("base_model.model.score.weight")!.shape).toEqual([3, TINY_LLAMA.hidden_size]);
  });
});

describe("SK-tuning's classification variant", () => {
  // Issue 11: SK-tuning for the classification format is its semantic prefix plus the same score
  // head over the final hidden state; both train, and PEFT's SEQ_CLS layout keeps the head.
  it("trains a semantic prefix and a score head together", async () => {
    const spec: Partial<FineTuneJob["spec"]> = {
      dataset: { train: "data/train.jsonl", eval: "data/eval.jsonl", format: "classification", labels: ["cat", "dog", "place"], maxSeqLength: 32 },
      objective: { type: "classification" },
      method: { type: "skTuning", skTuning: { description: "Is this sentence about a cat, a dog or a place?", variant: "prefix" } },
    };
    const job = await writeTinyJob({ lines: TRAIN, spec });
    jobs.push(job);
    await writeFile(path.join(job.dir, "data", "eval.jsonl"), HELD_OUT.map((line) => JSON.stringify(line)).join("\n") + "\n");
    const { result, events } = await runTinyJob(job, {
      hyperparameters: { maxSteps: 60, batchSize: 6, learningRate: 0.03, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    expect(result.status).toBe("completed");
    const evals = events.filter((event): event is Extract<ProgressEvent, { event: "eval" }> => event.event === "eval");
    expect(evals.at(-1)!.evalAccuracy).toBeGreaterThan(evals[0]!.evalAccuracy!);
    const out = path.join(job.dir, "out");
    const config = JSON.parse(await readFile(path.join(out, "adapter_config.json"), "utf8")) as Record<string, unknown>;
    expect(config).toMatchObject({ peft_type: "PREFIX_TUNING", task_type: "SEQ_CLS", modules_to_save: ["classifier", "score"] });
    const file = path.join(out, "adapter_model.safetensors");
    const tensors = readSafetensors(await readFile(file), file).tensors;
    expect(tensors.get("base_model.model.score.weight")!.shape).toEqual([3, TINY_LLAMA.hidden_size]);
    expect(tensors.has("prompt_embeddings")).toBe(true);
  });
});
