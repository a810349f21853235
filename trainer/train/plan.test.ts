import { describe, expect, it } from "vitest";
import { applyDefaults, type FineTuneJobSpec } from "../../api/index.ts";
import { datasetLocation, planJob, PlanError, RAW_PROMPT_TEMPLATE, splitLastSegment } from "./plan.ts";

const spec = (overrides: Partial<FineTuneJobSpec> = {}): FineTuneJobSpec => ({
  baseModel: { uri: "s3://models/smollm" },
  dataset: { train: "s3://data/sets/train.jsonl" },
  method: { type: "lora" },
  output: { uri: "s3://adapters/run-1" },
  ...overrides,
});

describe("planJob", () => {
  it("maps a defaulted spec to the loop's, the data pipeline's and the method's options", () => {
    const plan = planJob(
      applyDefaults(
        spec({
          dataset: {
            train: "s3://data/sets/train.jsonl",
            eval: "s3://data/sets/eval/eval.jsonl",
            format: "instruction",
            maxSeqLength: 256,
            fields: { prompt: "question", completion: "answer", input: "context" },
            shuffleBuffer: 500,
            badLines: "skip",
            maxBadLineFraction: 0.02,
          },
          hyperparameters: { maxSteps: 100, batchSize: 4, gradientAccumulation: 2, warmupRatio: 0.1, learningRate: 1e-3, evalEverySteps: 10, adamBeta1: 0.8, adamBeta2: 0.95, adamEpsilon: 1e-6 },
          method: { type: "lora", lora: { r: 16, targetModules: ["all-linear"] } },
          storage: { endpoint: "http://minio:9000", forcePathStyle: true, secretRef: { name: "s3" } },
        }),
      ),
    );
    expect(plan.training).toEqual({
      maxSteps: 100,
      batchSize: 4,
      gradientAccumulation: 2,
      learningRate: 1e-3,
      scheduler: "linear",
      warmupRatio: 0.1,
      weightDecay: 0,
      adamBeta1: 0.8,
      adamBeta2: 0.95,
      adamEpsilon: 1e-6,
      maxGradNorm: 1,
      evalEverySteps: 10,
      checkpointEverySteps: 500,
      checkpointKeep: 2,
      gradientCheckpointing: false,
    });
    // The API writes all-linear as a list; the method takes PEFT's bare string.
    expect(plan.method).toEqual({ type: "lora", options: { r: 16, alpha: 8, dropout: 0, rsLora: false, targetModules: "all-linear" }, optionsPath: "spec.method.lora" });
    expect(plan.dataset).toEqual({
      storeUri: "s3://data/sets",
      train: "train.jsonl",
      eval: "eval/eval.jsonl",
      options: {
        format: "instruction",
        fields: { instruction: "question", output: "answer", input: "context" },
        maxSeqLength: 256,
        packing: false,
        seed: 42,
        shuffleBufferSize: 500,
        evalFraction: 0,
        badLines: "skip",
        maxBadFraction: 0.02,
        instructionTemplate: RAW_PROMPT_TEMPLATE,
      },
    });
    expect(plan.checkpoint).toEqual({ storeUri: "s3://adapters/run-1", folder: "checkpoints", uri: "s3://adapters/run-1/checkpoints" });
    expect(plan.storage).toEqual({ endpoint: "http://minio:9000", forcePathStyle: true });
    expect(plan.seed).toBe(42);
  });

  it("resolves relative local paths against the manifest's folder", () => {
    const plan = planJob(applyDefaults(spec({ baseModel: { uri: "quickstart/model" }, dataset: { train: "quickstart/data/train.jsonl" }, output: { uri: "out/q" } })), {
      baseDir: "/repo/examples",
    });
    expect(plan.model.uri).toBe("/repo/examples/quickstart/model");
    expect(plan.dataset).toMatchObject({ storeUri: "/repo/examples/quickstart/data", train: "train.jsonl" });
    expect(plan.output.uri).toBe("/repo/examples/out/q");
    expect(plan.checkpoint).toEqual({ storeUri: "/repo/examples/out/q", folder: "checkpoints", uri: "/repo/examples/out/q/checkpoints" });
    expect(plan.training).toMatchObject({ epochs: 1, warmupSteps: 0 });
  });

  it("keeps the same fingerprint when only locations or the checkpoint interval change, and a new one when the numbers would", () => {
    const base = planJob(applyDefaults(spec())).fingerprint;
    expect(planJob(applyDefaults(spec({ output: { uri: "s3://adapters/elsewhere" }, checkpoint: { everySteps: 7 } }))).fingerprint).toBe(base);
    expect(planJob(applyDefaults(spec({ hyperparameters: { learningRate: 0.01 } }))).fingerprint).not.toBe(base);
    expect(planJob(applyDefaults(spec({ method: { type: "lora", lora: { r: 4 } } }))).fingerprint).not.toBe(base);
  });

  it("plans DPO with its beta and label smoothing, defaulted", () => {
    const dpo = spec({ objective: { type: "dpo", dpo: { beta: 0.3, labelSmoothing: 0.1 } }, dataset: { train: "s3://data/p.jsonl", format: "preference" } });
    expect(planJob(applyDefaults(dpo)).objective).toEqual({ type: "dpo", beta: 0.3, labelSmoothing: 0.1 });
    const defaulted = spec({ objective: { type: "dpo" }, dataset: { train: "s3://data/p.jsonl", format: "preference" } });
    expect(planJob(applyDefaults(defaulted)).objective).toEqual({ type: "dpo", beta: 0.1, labelSmoothing: 0 });
    expect(planJob(applyDefaults(spec())).objective).toEqual({ type: "sft" });
    const classifier = spec({ objective: { type: "classification" }, dataset: { train: "s3://data/c.jsonl", format: "classification", labels: ["no", "yes"] } });
    const planned = planJob(applyDefaults(classifier));
    expect(planned.objective).toEqual({ type: "classification" });
    expect(planned.dataset.options.classLabels).toEqual(["no", "yes"]);
  });

  it("refuses what this trainer cannot do, naming the field", () => {
    const classification = spec({ dataset: { train: "s3://data/c.jsonl", format: "classification" } });
    expect(() => planJob(applyDefaults(classification))).toThrow(
      new PlanError("spec.objective.type: classification trains on (and only on) dataset.format classification; got objective sft with format classification"),
    );
    const reward = spec({ objective: { type: "reward" }, dataset: { train: "s3://data/p.jsonl", format: "preference" }, output: { uri: "s3://adapters/run-1/", mergeIntoBase: true } });
    expect(() => planJob(applyDefaults(reward))).toThrow(/^spec\.output\.mergeIntoBase: a reward model's score head has no place in a causal LM/);
    expect(() => planJob(applyDefaults(spec({ checkpoint: { uri: "s3://adapters/run-1/" } })))).toThrow(/^spec\.checkpoint\.uri: must differ from output\.uri/);
    expect(() => planJob(applyDefaults(spec({ dataset: { train: "s3://data/t.jsonl", eval: "s3://other/e.jsonl" } })))).toThrow(/^spec\.dataset\.eval: must be in the same bucket/);
  });
});

describe("locations", () => {
  it("puts train and eval in the store of their common folder", () => {
    expect(datasetLocation("/d/a/train.jsonl", "/d/b/eval.jsonl")).toEqual({ storeUri: "/d", train: "a/train.jsonl", eval: "b/eval.jsonl" });
    expect(datasetLocation("s3://bucket/train.jsonl", undefined)).toEqual({ storeUri: "s3://bucket", train: "train.jsonl" });
    expect(datasetLocation("s3://bucket/shards", undefined)).toEqual({ storeUri: "s3://bucket", train: "shards" });
  });

  it("splits a checkpoint URI into its parent store and one folder", () => {
    expect(splitLastSegment("s3://bkt/jobs/x/checkpoints/")).toEqual({ storeUri: "s3://bkt/jobs/x", folder: "checkpoints" });
    expect(splitLastSegment("s3://bkt")).toEqual({ storeUri: "s3://bkt", folder: "checkpoints" });
    expect(splitLastSegment("/tmp/ckpt")).toEqual({ storeUri: "/tmp", folder: "ckpt" });
  });
});
