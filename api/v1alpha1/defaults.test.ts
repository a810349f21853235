import { describe, expect, it } from "vitest";
import { applyDefaults } from "./defaults.ts";
import type { FineTuneJobSpec } from "./finetunejob.ts";

const minimal: FineTuneJobSpec = {
  baseModel: { uri: "s3://models/base" },
  dataset: { train: "s3://datasets/train.jsonl" },
  method: { type: "lora" },
  output: { uri: "s3://adapters/out/" },
};

describe("applyDefaults", () => {
  it("fills every default of a minimal LoRA spec with PEFT's and the schema's values", () => {
    expect(applyDefaults(minimal)).toEqual({
      baseModel: { uri: "s3://models/base" },
      dataset: {
        train: "s3://datasets/train.jsonl",
        format: "text",
        fields: { text: "text" },
        maxSeqLength: 512,
        packing: false,
        shuffleBuffer: 10000,
        badLines: "fail",
        maxBadLineFraction: 0.1,
      },
      // No targetModules: the trainer picks the architecture's (PEFT's) default, which the API cannot know.
      method: { type: "lora", lora: { r: 8, alpha: 8, dropout: 0, rsLora: false } },
      objective: { type: "sft" },
      hyperparameters: {
        epochs: 1,
        batchSize: 8,
        gradientAccumulation: 1,
        learningRate: 0.0002,
        scheduler: "linear",
        warmupSteps: 0,
        weightDecay: 0,
        adamBeta1: 0.9,
        adamBeta2: 0.999,
        adamEpsilon: 1e-8,
        maxGradNorm: 1,
        seed: 42,
      },
      output: { uri: "s3://adapters/out/", mergeIntoBase: false },
      checkpoint: { everySteps: 500, keep: 2, uri: "s3://adapters/out/checkpoints" },
      storage: { forcePathStyle: false },
      resources: { gpus: 0 },
      runPolicy: { backoffLimit: 3, suspend: false },
      trainer: { backend: "auto", gradientCheckpointing: false },
    });
  });

  it("leaves its input unchanged and keeps the values it was given", () => {
    const spec: FineTuneJobSpec = { ...minimal, method: { type: "lora", lora: { r: 16 } }, hyperparameters: { maxSteps: 100, warmupRatio: 0.1 } };
    const copy = structuredClone(spec);
    const defaulted = applyDefaults(spec);
    expect(spec).toEqual(copy);
    expect(defaulted.method.lora).toMatchObject({ r: 16, alpha: 8 });
    expect(defaulted.hyperparameters).toMatchObject({ maxSteps: 100, warmupRatio: 0.1 });
    expect(defaulted.hyperparameters.epochs).toBeUndefined();
    expect(defaulted.hyperparameters.warmupSteps).toBeUndefined();
  });

  it("leaves IA3's modules to the trainer, which knows the architecture", () => {
    expect(applyDefaults({ ...minimal, method: { type: "ia3" } }).method.ia3).toEqual({});
    expect(applyDefaults({ ...minimal, method: { type: "ia3", ia3: { targetModules: ["c_attn", "mlp.c_proj"] } } }).method.ia3).toEqual({
      targetModules: ["c_attn", "mlp.c_proj"],
    });
  });

  it("fills the parameter block of each method", () => {
    expect(applyDefaults({ ...minimal, method: { type: "prompt" } }).method.prompt).toEqual({ numVirtualTokens: 20, init: "RANDOM" });
    expect(applyDefaults({ ...minimal, method: { type: "adapter" } }).method.adapter).toEqual({ variant: "houlsby", bottleneckSize: 64, activation: "relu" });
    expect(applyDefaults({ ...minimal, method: { type: "full" } }).method.full).toEqual({});
    expect(applyDefaults({ ...minimal, method: { type: "skTuning", skTuning: { description: "Classify it" } } }).method.skTuning).toEqual({
      description: "Classify it",
      variant: "prompt",
      projection: false,
    });
  });

  it("gives DPO its beta and the preference format its field names", () => {
    const defaulted = applyDefaults({
      ...minimal,
      objective: { type: "dpo" },
      dataset: { train: "s3://datasets/pairs.jsonl", format: "preference", fields: { chosen: "better" } },
    });
    expect(defaulted.objective).toEqual({ type: "dpo", dpo: { beta: 0.1, labelSmoothing: 0 } });
    expect(defaulted.dataset.fields).toEqual({ prompt: "prompt", chosen: "better", rejected: "rejected" });
  });
});
