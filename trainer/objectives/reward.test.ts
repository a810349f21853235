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
 * A reward model on the tiny job: preference pairs whose chosen answer ends "... is true." and
 * whose rejected answer ends with another word, after prompts and fillers drawn from a few
 * sentences. The held-out pairs combine prompts and fillers the training pairs never pair up,
 * so ranking them needs the learnt preference, not memorised pairs.
 */
const PROMPTS = ["The cat sat on the mat.", "The dog ran in the park.", "Hello, world!", "Say hello to the world.", "What is the capital of France?", "Translate to French: hello world."];
const FILLERS = ["Good answers are short.", "The capital of France is Paris.", "The cat sat.", "The dog ran.", "Bonjour le monde."];
const WRONG = ["cat", "dog", "world", "Paris", "park", "mat"];

function pair(prompt: number, filler: number): { prompt: string; chosen: string; rejected: string } {
  const wrong = WRONG[(prompt + filler) % WRONG.length]!;
  return { prompt: `${PROMPTS[prompt]!} `, chosen: `${FILLERS[filler]!} The answer is true.`, rejected: `${FILLERS[filler]!} The answer is ${wrong}.` };
}

// Training: the combinations with (prompt + filler) even; held out: those with it odd.
const all = PROMPTS.flatMap((_, p) => FILLERS.map((_, f) => ({ p, f })));
const TRAIN = all.filter(({ p, f }) => (p + f) % 2 === 0).map(({ p, f }) => pair(p, f));
const HELD_OUT = all.filter(({ p, f }) => (p + f) % 2 === 1).map(({ p, f }) => pair(p, f));

const SPEC: Partial<FineTuneJob["spec"]> = {
  dataset: { train: "data/train.jsonl", eval: "data/eval.jsonl", format: "preference", maxSeqLength: 48 },
  objective: { type: "reward" },
  method: { type: "lora", lora: { r: 8, alpha: 16, targetModules: ["all-linear"] } },
};

const jobs: TinyJob[] = [];
beforeAll(async () => {
  await selectBackend("cpu");
});
afterAll(async () => {
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

async function rewardJob(): Promise<TinyJob> {
  const job = await writeTinyJob({ lines: TRAIN, spec: SPEC });
  jobs.push(job);
  await writeFile(path.join(job.dir, "data", "eval.jsonl"), HELD_OUT.map((line) => JSON.stringify(line)).join("\n") + "\n");
  return job;
}

const evals = (events: ProgressEvent[]) => events.filter((event): event is Extract<ProgressEvent, { event: "eval" }> => event.event === "eval");

describe("a reward model", () => {
  it("ranks held-out synthetic pairs above 0.9 accuracy, and exports its score head as PEFT's SEQ_CLS does", async () => {
    const job = await rewardJob();
    const { result, events } = await runTinyJob(job, {
      hyperparameters: { maxSteps: 40, batchSize: 8, learningRate: 0.005, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    expect(result.status).toBe("completed");
    const [before, after] = [evals(events)[0]!, evals(events).at(-1)!];
    expect(before.step).toBe(0);
    // The untrained head ranks a third of them right (0.33 here): the preference is learnt.
    expect(before.evalPreference!.rewardsAccuracies).toBeLessThan(0.6);
    expect(after.step).toBe(40);
    expect(after.evalPreference!.rewardsAccuracies).toBeGreaterThan(0.9);
    expect(after.evalLoss).toBeLessThan(before.evalLoss);
    expect(after.evalPreference!.logpsChosen).toBeUndefined();

    const out = path.join(job.dir, "out");
    const config = JSON.parse(await readFile(path.join(out, "adapter_config.json"), "utf8")) as Record<string, unknown>;
    expect(config).toMatchObject({ peft_type: "LORA", task_type: "SEQ_CLS", modules_to_save: ["classifier", "score"] });
    const file = path.join(out, "adapter_model.safetensors");
    const tensors = readSafetensors(await readFile(file), file).tensors;
    expect(tensors.get("base_model.model.score.weight")!.shape).toEqual([1, TINY_LLAMA.hidden_size]);
    expect([...tensors.keys()].filter((name) => name.includes("lora_A")).length).toBeGreaterThan(0);
  });

  it("continues a stopped run from its checkpoint to the same adapter and score head, byte for byte", async () => {
    const spec: Partial<FineTuneJob["spec"]> = {
      hyperparameters: { maxSteps: 6, batchSize: 4, gradientAccumulation: 2, learningRate: 0.005, warmupSteps: 2, weightDecay: 0.01, seed: 11 },
      checkpoint: { everySteps: 2, keep: 2 },
    };
    const straight = await rewardJob();
    await runTinyJob(straight, spec);
    const resumed = await rewardJob();
    const controller = new AbortController();
    const first = await runTinyJob(resumed, spec, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 3 && controller.abort() });
    expect(first.result).toMatchObject({ status: "stopped", step: 3 });
    await runTinyJob(resumed, spec);
    const read = (job: TinyJob) => readFile(path.join(job.dir, "out", "adapter_model.safetensors"));
    expect(await read(resumed)).toEqual(await read(straight));
  });
});
