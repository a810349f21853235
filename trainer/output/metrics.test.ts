import { describe, expect, it } from "vitest";
import type { TrainingState } from "../train/loop.ts";
import { trainingMetrics, type MetricsContext } from "./metrics.ts";
import { loadableBy } from "./output.ts";

const STATE: TrainingState = {
  fingerprint: "f",
  step: 2,
  totalSteps: 2,
  batchesPerEpoch: 2,
  microBatches: 2,
  position: undefined,
  rng: [],
  tokens: 100,
  trainingSeconds: 1,
  attemptStarts: [0],
  steps: [],
  evals: [],
};
const CONTEXT: MetricsContext = {
  method: "lora",
  baseModel: "model",
  architecture: "LlamaForCausalLM",
  backend: { name: "wasm", device: "cpu", description: "1 CPU thread", reason: "test" } as MetricsContext["backend"],
  trainableParameters: 1000,
  baseParameters: 99_000,
  batchSize: 4,
  gradientAccumulation: 1,
};

describe("training_metrics.json's parameter counts", () => {
  it("adds an adapter's parameters to the base model's", () => {
    expect(trainingMetrics(STATE, CONTEXT)).toMatchObject({ trainableParameters: 1000, totalParameters: 100_000, trainableShare: 0.01 });
  });

  it("counts full fine-tuning's parameters once: they are the base model's", () => {
    const full = trainingMetrics(STATE, { ...CONTEXT, method: "full", trainableParameters: 99_000, trainsBaseWeights: true });
    expect(full).toMatchObject({ method: "full", trainableParameters: 99_000, totalParameters: 99_000, trainableShare: 1 });
  });
});

describe("status.outputs.loadableBy", () => {
  const lora = { peft_type: "LORA", r: 8, use_dora: false, modules_to_save: null };
  it("lists vLLM for plain LoRA within its default rank limit only", () => {
    expect(loadableBy(lora, false)).toEqual(["PEFT", "vLLM"]);
    expect(loadableBy({ ...lora, r: 32 }, false)).toEqual(["PEFT"]);
    expect(loadableBy({ ...lora, use_dora: true }, true)).toEqual(["PEFT", "Transformers"]);
  });

  it("lists PEFT for its other formats, kubetune alone for bottleneck adapters, Transformers and vLLM for a whole model", () => {
    expect(loadableBy({ peft_type: "IA3" }, true)).toEqual(["PEFT", "Transformers"]);
    expect(loadableBy({ peft_type: "PROMPT_TUNING" }, false)).toEqual(["PEFT"]);
    expect(loadableBy({ peft_type: "BOTTLENECK_ADAPTER" }, false)).toEqual(["kubetune"]);
    expect(loadableBy({}, false, true)).toEqual(["Transformers", "vLLM"]);
  });
});
