import { rmSync } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FineTuneJob } from "../api/index.ts";
import { StorageError } from "../storage/object-store.ts";
import { selectBackend } from "./backend/backend.ts";
import { MemoryObjectStore } from "./data/memory-store.ts";
import { JobError, toJobError } from "./run.ts";
import { parseSafetensors } from "./safetensors/safetensors.ts";
import { runTinyJob, SYNTHETIC_SENTENCES, writeTinyJob, type TinyJob } from "./testing/tiny-job.ts";
import type { ProgressEvent } from "./train/progress.ts";

/** Short runs: 4 steps of 4 examples, a checkpoint every 2 steps. */
const SHORT: Partial<FineTuneJob["spec"]> = {
  hyperparameters: { maxSteps: 4, batchSize: 4, learningRate: 0.01, seed: 7 },
  checkpoint: { everySteps: 2, keep: 2 },
};

const jobs: TinyJob[] = [];
beforeAll(async () => {
  await selectBackend("cpu");
});
afterAll(async () => {
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

async function tinyJob(spec: Partial<FineTuneJob["spec"]> = {}): Promise<TinyJob> {
  const job = await writeTinyJob({ spec: { ...SHORT, ...spec } });
  jobs.push(job);
  return job;
}

const run = runTinyJob;

const startOf = (events: ProgressEvent[]) => events.find((event) => event.event === "start");
const warningsOf = (events: ProgressEvent[]) => events.filter((event) => event.event === "warning");
const folderEntries = async (job: TinyJob, folder: string) => (await readdir(path.join(job.dir, folder))).sort();
const lines = (texts: string[]) => texts.map((text) => JSON.stringify({ text })).join("\n") + "\n";

describe("dataset prefixes", () => {
  it("trains on every *.jsonl file under a train or eval prefix", async () => {
    const job = await tinyJob();
    await mkdir(path.join(job.dir, "data/shards"), { recursive: true });
    await mkdir(path.join(job.dir, "data/held-out"), { recursive: true });
    await writeFile(path.join(job.dir, "data/shards/a.jsonl"), lines(SYNTHETIC_SENTENCES.slice(0, 3)));
    await writeFile(path.join(job.dir, "data/shards/b.jsonl"), lines(SYNTHETIC_SENTENCES.slice(3, 5)));
    await writeFile(path.join(job.dir, "data/shards/README.md"), "not data");
    await writeFile(path.join(job.dir, "data/held-out/eval.jsonl"), lines(SYNTHETIC_SENTENCES.slice(5)));
    const { result } = await run(job, {
      dataset: { train: "data/shards", eval: "data/held-out/", format: "text", maxSeqLength: 32 },
      hyperparameters: { epochs: 1, batchSize: 1, learningRate: 0.01, seed: 7 },
      checkpoint: { everySteps: 100 },
    });
    if (result.status !== "completed") throw new Error("expected a completed run");
    // One step per record of both files, and an evaluation of the held-out file before and after.
    expect(result.metrics).toMatchObject({ steps: 5, totalSteps: 5 });
    expect(result.metrics.eval.map((entry) => entry.step)).toEqual([0, 5]);
  });

  it("reports a dataset file that disappears after preflight as InvalidDataset, never ModelNotFound", async () => {
    const job = await tinyJob();
    const failed = run(job, {}, { onProgress: (event) => event.event === "backend" && rmSync(path.join(job.dir, "data/train.jsonl")) });
    await expect(failed).rejects.toBeInstanceOf(JobError);
    await expect(failed).rejects.toMatchObject({ reason: "InvalidDataset", message: expect.stringContaining("data/train.jsonl") });
  });

  it("maps a missing object to the reason of the store it is missing from", () => {
    const stores = { model: new MemoryObjectStore("s3://models/llama"), dataset: new MemoryObjectStore("s3://models/llama-data") };
    const missing = (uri: string) => toJobError(new StorageError("NotFound", uri, "no such object"), stores).reason;
    expect(missing("s3://models/llama-data/train.jsonl")).toBe("InvalidDataset");
    expect(missing("s3://models/llama/config.json")).toBe("ModelNotFound");
    expect(missing("s3://adapters/out/adapter_config.json")).toBe("InvalidSpec");
    expect(toJobError(new StorageError("AccessDenied", "s3://models/llama-data/train.jsonl", "denied"), stores).reason).toBe("StorageAccessDenied");
  });
});

describe("the base model in the outputs", () => {
  const adapterConfig = async (job: TinyJob, out = "out") => JSON.parse(await readFile(path.join(job.dir, out, "adapter_config.json"), "utf8"));
  const safetensorsMetadata = async (job: TinyJob, out = "out") =>
    parseSafetensors(await readFile(path.join(job.dir, out, "adapter_model.safetensors")), "adapter_model.safetensors").metadata;

  it("is named as PEFT finds it (baseModel.name, else config.json's _name_or_path), and its URI is kept in the safetensors metadata", async () => {
    const job = await tinyJob({ hyperparameters: { maxSteps: 1, batchSize: 4, learningRate: 0.01, seed: 7 } });
    const configPath = path.join(job.dir, "model/config.json");
    await writeFile(configPath, JSON.stringify({ ...JSON.parse(await readFile(configPath, "utf8")), _name_or_path: "HuggingFaceTB/SmolLM2-135M" }));

    await run(job);
    expect(await adapterConfig(job)).toMatchObject({ base_model_name_or_path: "HuggingFaceTB/SmolLM2-135M" });
    // As the spec writes it, so that the same job run from another folder writes the same bytes.
    expect(await safetensorsMetadata(job)).toEqual({ format: "pt", base_model_uri: "model" });
    expect(JSON.parse(await readFile(path.join(job.dir, "out/training_metrics.json"), "utf8"))).toMatchObject({ baseModel: "model" });

    await run(job, { baseModel: { uri: "model", name: "my-org/tiny-llama" }, output: { uri: "named" } });
    expect(await adapterConfig(job, "named")).toMatchObject({ base_model_name_or_path: "my-org/tiny-llama" });
  });

  it("is the model folder's absolute path when nothing names it, which PEFT loads on the same machine", async () => {
    const job = await tinyJob({ hyperparameters: { maxSteps: 1, batchSize: 4, learningRate: 0.01, seed: 7 } });
    await run(job);
    expect(await adapterConfig(job)).toMatchObject({ base_model_name_or_path: path.join(job.dir, "model") });
  });
});

describe("resuming", () => {
  it("starts over rather than resume on a dataset replaced in place (same size and time, other content), and says why", async () => {
    const job = await tinyJob();
    expect(startOf((await run(job)).events)).toMatchObject({ step: 0 });
    const file = path.join(job.dir, "data/train.jsonl");
    const before = await stat(file);
    const text = await readFile(file, "utf8");
    await writeFile(file, text.replace("The cat sat", "The dog sat"));
    await utimes(file, before.atime, before.mtime);

    const { result, events } = await run(job);
    expect(startOf(events)).toMatchObject({ step: 0 });
    expect(startOf(events)).not.toHaveProperty("resumedFrom");
    expect(warningsOf(events)).toEqual([{ event: "warning", reason: "OtherCheckpointsIgnored", message: expect.stringMatching(/checkpoints holds 2 checkpoint\(s\) of other jobs/) }]);
    expect(result.status).toBe("completed");
    // And the same data resumes: the run's own final checkpoint.
    expect(startOf((await run(job)).events)).toMatchObject({ step: 4, resumedFrom: expect.stringMatching(/\/out\/checkpoints\/step-00000004-[a-z0-9]+$/) });
  });

  it("falls back to the previous checkpoint when the newest is corrupt, and reports it", async () => {
    const job = await tinyJob();
    const controller = new AbortController();
    await run(job, {}, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 4 && controller.abort() });
    const [older, newest] = await folderEntries(job, "out/checkpoints");
    expect(newest).toMatch(/^step-00000004-/);
    await writeFile(path.join(job.dir, "out/checkpoints", newest!, "tensors.bin"), "garbage");

    const { result, events } = await run(job);
    expect(warningsOf(events)).toEqual([
      {
        event: "warning",
        reason: "CheckpointUnreadable",
        message: expect.stringMatching(new RegExp(`checkpoint .*/${newest}.*content does not match the manifest's sha256.*; resuming from .*/${older}`)),
      },
    ]);
    expect(startOf(events)).toMatchObject({ step: 2, resumedFrom: expect.stringContaining(older!) });
    expect(result.status).toBe("completed");
  });

  it("keeps two jobs sharing a checkpoint folder apart: neither resumes from nor prunes the other's checkpoints", async () => {
    const job = await tinyJob({ checkpoint: { everySteps: 2, keep: 1, uri: "shared" } });
    await mkdir(path.join(job.dir, "shared/base-model"), { recursive: true });
    await writeFile(path.join(job.dir, "shared/base-model/config.json"), "{}");
    await run(job);
    const afterA = await folderEntries(job, "shared");
    expect(afterA).toEqual(["base-model", expect.stringMatching(/^step-00000004-/)]);

    const jobB = { hyperparameters: { maxSteps: 4, batchSize: 4, learningRate: 0.02, seed: 7 }, output: { uri: "out-b" } };
    const b = await run(job, jobB);
    expect(startOf(b.events)).toMatchObject({ step: 0 });
    const afterB = await folderEntries(job, "shared");
    expect(afterB).toHaveLength(3);
    expect(afterB).toEqual(expect.arrayContaining(afterA));

    expect(startOf((await run(job)).events)).toMatchObject({ step: 4, resumedFrom: expect.stringContaining(afterA[1]!) });
    expect(startOf((await run(job, jobB)).events)).toMatchObject({ step: 4, resumedFrom: expect.not.stringContaining(afterA[1]!) });
  });
});

describe("hyperparameters", () => {
  it("honours AdamW's betas and epsilon", async () => {
    const job = await tinyJob({ hyperparameters: { maxSteps: 2, batchSize: 4, learningRate: 0.01, seed: 7 } });
    const adapter = async (out: string, adam: object) => {
      await run(job, { hyperparameters: { maxSteps: 2, batchSize: 4, learningRate: 0.01, seed: 7, ...adam }, output: { uri: out } });
      return readFile(path.join(job.dir, out, "adapter_model.safetensors"));
    };
    const defaults = await adapter("defaults", {});
    expect(await adapter("explicit-defaults", { adamBeta1: 0.9, adamBeta2: 0.999, adamEpsilon: 1e-8 })).toEqual(defaults);
    expect(await adapter("beta1", { adamBeta1: 0.5 })).not.toEqual(defaults);
    expect(await adapter("epsilon", { adamEpsilon: 0.1 })).not.toEqual(defaults);
  });
});

describe("defaults that depend on the architecture", () => {
  it("adapts GPT-2's c_attn when a LoRA job names no target modules, as PEFT does", async () => {
    const job = await writeTinyJob({ family: "gpt2", spec: { ...SHORT, method: { type: "lora", lora: { r: 4, alpha: 8 } } } });
    jobs.push(job);
    const { result } = await run(job);
    expect(result.status).toBe("completed");
    const config = JSON.parse(await readFile(path.join(job.dir, "out", "adapter_config.json"), "utf8")) as { target_modules: string[] };
    expect(config.target_modules).toEqual(["c_attn"]);
  });

  it("adapts q_proj and v_proj of a Llama-family model by default", async () => {
    const job = await tinyJob({ method: { type: "lora", lora: { r: 4, alpha: 8 } } });
    await run(job);
    const config = JSON.parse(await readFile(path.join(job.dir, "out", "adapter_config.json"), "utf8")) as { target_modules: string[] };
    expect([...config.target_modules].sort()).toEqual(["q_proj", "v_proj"]);
  });
});
