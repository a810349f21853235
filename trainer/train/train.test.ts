import { readdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { LocalObjectStore } from "../../storage/local-store.ts";
import { selectBackend } from "../backend/backend.ts";
import { DataLoader } from "../data/loader.ts";
import { loadModel } from "../model/loader.ts";
import type { RunJobOptions } from "../run.ts";
import { parseSafetensors, readSafetensors } from "../safetensors/safetensors.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "../testing/tiny-job.ts";
import type { ProgressEvent } from "./progress.ts";

const jobs: TinyJob[] = [];
beforeAll(async () => {
  await selectBackend("cpu");
});
afterAll(async () => {
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

async function tinyJob(spec: Partial<FineTuneJob["spec"]> = {}): Promise<TinyJob> {
  const job = await writeTinyJob({ spec });
  jobs.push(job);
  return job;
}

/** runTinyJob with the options first: most tests here pass options, few a spec. */
const run = (job: TinyJob, options: RunJobOptions = {}, spec: Partial<FineTuneJob["spec"]> = {}) => runTinyJob(job, spec, options);

const steps = (events: ProgressEvent[]) => events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");
const output = (job: TinyJob, file: string) => readFile(path.join(job.dir, "out", file));

/** Every feature that keeps state across steps: accumulation, dropout, eval, checkpoints, warmup. */
const STATEFUL: Partial<FineTuneJob["spec"]> = {
  dataset: { train: "data/train.jsonl", format: "text", maxSeqLength: 32, evalFraction: 0.25 },
  method: { type: "lora", lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj", "down_proj"] } },
  hyperparameters: { maxSteps: 8, batchSize: 2, gradientAccumulation: 2, learningRate: 0.01, warmupSteps: 2, weightDecay: 0.01, evalEverySteps: 3, seed: 11 },
  checkpoint: { everySteps: 3, keep: 2 },
};

describe("the training loop", () => {
  it("lowers the loss on a learnable task by at least half", async () => {
    const job = await tinyJob({
      method: { type: "lora", lora: { r: 8, alpha: 16, targetModules: ["all-linear"] } },
      hyperparameters: { maxSteps: 60, batchSize: 4, learningRate: 0.01, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    const { result, events } = await run(job);
    const losses = steps(events).map((event) => event.loss);
    expect(losses).toHaveLength(60);
    const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
    expect(mean(losses.slice(-5))).toBeLessThan(mean(losses.slice(0, 3)) / 2);
    expect(result.status).toBe("completed");
  });

  it("keeps the number of live tensors flat from step to step", async () => {
    const job = await tinyJob(STATEFUL);
    const counts: number[] = [];
    await run(job, { onProgress: (event) => event.event === "step" && counts.push(tf.memory().numTensors) });
    expect(counts).toHaveLength(8);
    expect(new Set(counts.slice(1)).size).toBe(1);
  });

  it("continues a stopped run from its checkpoint to the same adapter, byte for byte", async () => {
    const uninterrupted = await tinyJob(STATEFUL);
    const { events: straight } = await run(uninterrupted);

    const interrupted = await tinyJob(STATEFUL);
    const controller = new AbortController();
    const first = await run(interrupted, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 4 && controller.abort() });
    expect(first.result).toMatchObject({ status: "stopped", step: 4, totalSteps: 8, checkpoint: expect.stringMatching(/checkpoints\/step-00000004-[a-z0-9]+$/) });
    const second = await run(interrupted);
    expect(second.events.find((event) => event.event === "start")).toMatchObject({ event: "start", step: 4, resumedFrom: expect.stringMatching(/step-00000004-[a-z0-9]+$/) });
    expect(second.result.status).toBe("completed");

    expect(await output(interrupted, "adapter_model.safetensors")).toEqual(await output(uninterrupted, "adapter_model.safetensors"));
    const metrics = (job: TinyJob) => output(job, "training_metrics.json").then((bytes) => JSON.parse(bytes.toString()));
    const [a, b] = [await metrics(uninterrupted), await metrics(interrupted)];
    expect(b.loss.map((entry: { loss: number }) => entry.loss)).toEqual(a.loss.map((entry: { loss: number }) => entry.loss));
    expect(b.eval).toEqual(a.eval);
    expect(b).toMatchObject({ attempts: 2, resumedFromSteps: [4] });
    expect(steps(straight).map((event) => event.loss)).toEqual(a.loss.map((entry: { loss: number }) => entry.loss));
  });

  it("asks the loader for each step's batches before the previous step computes (prefetch)", async () => {
    const job = await tinyJob({ ...STATEFUL, hyperparameters: { ...STATEFUL.hyperparameters, maxSteps: 4, evalEverySteps: 100 }, checkpoint: { everySteps: 100 } });
    const log: string[] = [];
    const trainBatches = DataLoader.prototype.trainBatches;
    let passes = 0;
    const spy = vi.spyOn(DataLoader.prototype, "trainBatches").mockImplementation(function (this: DataLoader, ...args) {
      const batches = trainBatches.apply(this, args);
      // The first pass only counts the batches.
      if (passes++ === 0) return batches;
      const next = batches.next.bind(batches);
      batches.next = () => {
        log.push("batch");
        return next();
      };
      return batches;
    });
    try {
      await run(job, { onProgress: (event) => event.event === "step" && log.push(`step ${event.step}`) });
    } finally {
      spy.mockRestore();
    }
    // Two batches a step (gradientAccumulation 2). The first of step n + 1 is asked for before step n
    // computes; the second once the step has freed the thread. Without prefetch: batch, batch, step 1, ...
    expect(log).toEqual(["batch", "batch", "batch", "step 1", "batch", "batch", "step 2", "batch", "batch", "step 3", "batch", "step 4"]);
  });

  it("starts over rather than continue a checkpoint written with other hyperparameters, and leaves that checkpoint alone", async () => {
    const job = await tinyJob();
    await run(job);
    const changed = await run(job, {}, { hyperparameters: { maxSteps: 6, batchSize: 4, learningRate: 0.02, seed: 7 } });
    expect(changed.events.find((event) => event.event === "start")).toMatchObject({ step: 0 });
    expect(changed.events).toContainEqual({ event: "warning", reason: "OtherCheckpointsIgnored", message: expect.stringMatching(/checkpoints holds 2 checkpoint\(s\) of other jobs/) });
    expect(await readdir(path.join(job.dir, "out/checkpoints"))).toHaveLength(4);
  });
});

describe("the outputs", () => {
  it("are an adapter in PEFT's format whose every tensor names a module of the model", async () => {
    const job = await tinyJob({ ...STATEFUL, method: { type: "lora", lora: { r: 4, alpha: 8, targetModules: ["q_proj", "v_proj", "down_proj"] } } });
    const { result } = await run(job, { sample: true });
    if (result.status !== "completed") throw new Error("expected a completed run");

    const model = await loadModel(new LocalObjectStore(path.join(job.dir, "model")));
    const bytes = await output(job, "adapter_model.safetensors");
    const parsed = parseSafetensors(bytes, "adapter_model.safetensors");
    expect(parsed.metadata).toEqual({ format: "pt", base_model_uri: "model" });
    expect(parsed.entries.size).toBe(2 * 3 * model.config.numLayers);
    for (const [name, entry] of parsed.entries) {
      const match = /^base_model\.model\.(model\.layers\.\d+\.(?:self_attn|mlp)\.\w+)\.lora_([AB])\.weight$/.exec(name);
      expect(match, name).not.toBeNull();
      const module = model.linears.get(match![1]!);
      expect(module, name).toBeDefined();
      expect(entry.dtype).toBe("F32");
      expect(entry.shape).toEqual(match![2] === "A" ? [4, module!.inFeatures] : [module!.outFeatures, 4]);
    }
    model.dispose();

    const config = JSON.parse((await output(job, "adapter_config.json")).toString());
    expect(config).toMatchObject({
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: path.join(job.dir, "model"),
      r: 4,
      lora_alpha: 8,
      lora_dropout: 0,
      target_modules: ["q_proj", "v_proj", "down_proj"],
      bias: "none",
      fan_in_fan_out: false,
      use_rslora: false,
      use_dora: false,
      modules_to_save: null,
      inference_mode: true,
      init_lora_weights: true,
      layers_to_transform: null,
      rank_pattern: {},
      alpha_pattern: {},
      revision: null,
    });

    const metrics = JSON.parse((await output(job, "training_metrics.json")).toString());
    expect(metrics).toMatchObject({ method: "lora", backend: tf.getBackend(), steps: 8, totalSteps: 8, attempts: 1, trainableParameters: result.outputs.trainableParameters });
    expect(metrics.trainableShare).toBeCloseTo(metrics.trainableParameters / metrics.totalParameters, 12);
    expect(metrics.loss).toHaveLength(8);
    expect(metrics.eval.map((entry: { step: number }) => entry.step)).toEqual([0, 3, 6, 8]);
    expect(metrics.eval[0].perplexity).toBeCloseTo(Math.exp(metrics.eval[0].loss), 6);
    expect(metrics.tokensPerSecond).toBeGreaterThan(0);
    expect(metrics.sample).toEqual({ prompt: expect.any(String), base: expect.any(String), adapter: expect.any(String) });
    expect((await output(job, "loss.svg")).toString()).toMatch(/^<svg [^>]*>[\s\S]*<polyline[\s\S]*<\/svg>\n$/);

    const manifest = JSON.parse((await output(job, "manifest.json")).toString());
    expect(manifest.files.map((file: { name: string }) => file.name)).toEqual(["adapter_config.json", "adapter_model.safetensors", "training_metrics.json", "loss.svg"]);
    expect(result.outputs).toMatchObject({ uri: expect.stringMatching(/^file:\/\/.*\/out$/), loadableBy: ["PEFT", "vLLM"], files: manifest.files });
  });

  it("include the merged model with mergeIntoBase: W + (alpha / r) B A in Hugging Face's layout, with the tokenizer", async () => {
    const job = await tinyJob({ output: { uri: "out", mergeIntoBase: true } });
    const { result } = await run(job);
    expect(result).toMatchObject({ outputs: { mergedUri: expect.stringMatching(/\/out\/merged$/), loadableBy: ["PEFT", "vLLM", "Transformers"] } });
    const merged = readSafetensors(await output(job, "merged/model.safetensors"), "merged").tensors;
    const base = readSafetensors(await readFile(path.join(job.dir, "model", "model.safetensors")), "base").tensors;
    const adapter = readSafetensors(await output(job, "adapter_model.safetensors"), "adapter").tensors;
    const name = "model.layers.1.self_attn.v_proj";
    const a = adapter.get(`base_model.model.${name}.lora_A.weight`)!;
    const b = adapter.get(`base_model.model.${name}.lora_B.weight`)!;
    const [out, r] = b.shape as [number, number];
    const inFeatures = a.shape[1]!;
    const w = base.get(`${name}.weight`)!.data;
    const expected = Float32Array.from({ length: out * inFeatures }, (_, i) => {
      const [row, column] = [Math.floor(i / inFeatures), i % inFeatures];
      let update = 0;
      for (let k = 0; k < r; k++) update += b.data[row * r + k]! * a.data[k * inFeatures + column]!;
      return w[i]! + (8 / 4) * update;
    });
    const actual = merged.get(`${name}.weight`)!.data;
    expect(Math.max(...actual.map((value, i) => Math.abs(value - expected[i]!)))).toBeLessThan(1e-6);
    expect(merged.get("model.layers.1.self_attn.k_proj.weight")!.data).toEqual(base.get("model.layers.1.self_attn.k_proj.weight")!.data);
    expect((await output(job, "merged/tokenizer.json")).equals(await readFile(path.join(job.dir, "model", "tokenizer.json")))).toBe(true);
    const reloaded = await loadModel(new LocalObjectStore(path.join(job.dir, "out", "merged")));
    expect(reloaded.config.architecture).toBe("LlamaForCausalLM");
    reloaded.dispose();
  });
});
