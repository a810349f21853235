import { readFile, rm } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../../api/index.ts";
import { selectBackend } from "../../backend/backend.ts";
import { IGNORE_INDEX } from "../../data/encode.ts";
import { loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { readSafetensors, type TensorMap } from "../../safetensors/safetensors.ts";
import { logitsOf, relativeError, sampleIds } from "../../testing/compare.ts";
import { referenceGpt2Logits, referenceLlamaLogits, type ReferenceInputs, type ReferenceWeights } from "../../testing/reference.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "../../testing/tiny-job.ts";
import { TINY_GPT2, TINY_LLAMA, writeTinyModel, type TinyModel } from "../../testing/tiny-models.ts";
import { evalBatchLoss } from "../../train/step.ts";
import type { ProgressEvent } from "../../train/progress.ts";
import { getMethod } from "../registry.ts";
import { adapterLogits, checkInPeft, FIXTURES, huggingFacePython, loadFixture } from "../prompt/testing.ts";
import type { PrefixOptions } from "./config.ts";
import { prefixMethod, type PrefixAdapter } from "./model.ts";

const IDS = sampleIds(2, 6, 53);
const MASK = [
  [1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 0, 0],
];

let llamaFolder: TinyModel;
let gpt2Folder: TinyModel;
let llama: CausalLM;
let gpt2: CausalLM;
const jobs: TinyJob[] = [];

beforeAll(async () => {
  await selectBackend("cpu");
  llamaFolder = await writeTinyModel(TINY_LLAMA, { seed: 11 });
  gpt2Folder = await writeTinyModel(TINY_GPT2, { seed: 12 });
  llama = await loadModel(llamaFolder.store);
  gpt2 = await loadModel(gpt2Folder.store);
});

afterAll(async () => {
  llama.dispose();
  gpt2.dispose();
  await rm(llamaFolder.dir, { recursive: true, force: true });
  await rm(gpt2Folder.dir, { recursive: true, force: true });
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

function inject(model: CausalLM, options: PrefixOptions = {}, seed = 3): PrefixAdapter {
  return prefixMethod.inject(model, options, { rng: Rng.fromSeed(seed), baseModelNameOrPath: "s3://models/tiny" }) as PrefixAdapter;
}

function withAdapter<T>(model: CausalLM, options: PrefixOptions, body: (adapter: PrefixAdapter) => T): T {
  const adapter = inject(model, options);
  try {
    return body(adapter);
  } finally {
    adapter.remove();
  }
}

const maxAbsDifference = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
};

/** PEFT's config less what depends on where and with which PEFT version it was written. */
const comparableConfig = (config: Record<string, unknown>) => {
  const { peft_version: _version, base_model_name_or_path: _base, ...rest } = config;
  return rest;
};

describe("prefix tuning", () => {
  it("sizes the prefix per key/value head as PEFT does (grouped-query attention)", () => {
    withAdapter(llama, { numVirtualTokens: 5 }, (adapter) => {
      // 2 layers x (key, value) x 2 key/value heads x head_dim 8.
      expect(adapter.exportTensors().get("prompt_embeddings")!.shape).toEqual([5, 2 * 2 * 16]);
      expect(adapter.trainableParameterCount()).toBe(5 * 64);
      expect(adapter.adapterConfig()).toMatchObject({ peft_type: "PREFIX_TUNING", token_dim: 16, num_attention_heads: 2, num_layers: 2, num_virtual_tokens: 5, encoder_hidden_size: 16 });
      expect(Object.keys(adapter.adapterConfig())).toEqual(Object.keys(adapter.adapterConfig()).sort());
    });
    withAdapter(gpt2, { numVirtualTokens: 2, projection: true, projectionHiddenSize: 7 }, (adapter) => {
      expect(adapter.exportTensors().get("prompt_embeddings")!.shape).toEqual([2, 2 * 2 * 24]);
      expect(adapter.trainableParameterCount()).toBe(2 * 24 + (24 * 7 + 7) + (7 * 96 + 96));
      expect(adapter.adapterConfig()).toMatchObject({ token_dim: 24, num_attention_heads: 3, prefix_projection: true, encoder_hidden_size: 7 });
    });
  });

  it("initialises the prefix from N(0, 1) with the seed, as torch.nn.Embedding", () => {
    const values = withAdapter(llama, { numVirtualTokens: 20 }, (adapter) => adapter.exportTensors().get("prompt_embeddings")!.data);
    const again = withAdapter(llama, { numVirtualTokens: 20 }, (adapter) => adapter.exportTensors().get("prompt_embeddings")!.data);
    expect(again).toEqual(values);
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
    expect(Math.abs(mean)).toBeLessThan(0.1);
    expect(Math.abs(variance - 1)).toBeLessThan(0.1);
  });

  it("leaves the base model alone with disableAdapters and after removal", () => {
    const base = logitsOf(llama, IDS, MASK);
    withAdapter(llama, {}, (adapter) => {
      const adapted = adapterLogits(adapter, IDS, MASK);
      expect(relativeError(adapted, base)).toBeGreaterThan(1e-2);
      expect(tf.tidy(() => adapter.forward({ inputIds: tf.tensor2d(IDS.flat(), [2, 6], "int32"), attentionMask: tf.tensor2d(MASK.flat(), [2, 6], "int32"), disableAdapters: true }).dataSync())).toEqual(base);
    });
    expect(logitsOf(llama, IDS, MASK)).toEqual(base);
  });

  it("refuses invalid options with the field's path, and has no merge", () => {
    expect(() => inject(llama, { numVirtualTokens: 0 })).toThrow("spec.method.numVirtualTokens: must be an integer from 1 to 512, got 0");
    expect(() => inject(llama, { projectionHiddenSize: 8 })).toThrow("spec.method.projectionHiddenSize: is only used with projection: true");
    expect(() => inject(llama, { projection: "yes" as unknown as boolean })).toThrow('spec.method.projection: must be true or false, got "yes"');
    withAdapter(llama, {}, (adapter) => expect(() => adapter.merge()).toThrow(/nothing to merge; load the adapter with PEFT/));
    expect(getMethod("prefix")).toBe(prefixMethod);
  });

  it("saves and restores its state exactly, and refuses a state of other options", () => {
    withAdapter(llama, { projection: true, numVirtualTokens: 3 }, (adapter) => {
      const saved = adapter.saveState();
      const logits = adapterLogits(adapter, IDS, MASK);
      withAdapter(llama, { projection: true, numVirtualTokens: 3 }, (other) => {
        other.loadState(saved);
        expect(adapterLogits(other, IDS, MASK)).toEqual(logits);
      });
      withAdapter(llama, { numVirtualTokens: 3 }, (other) => expect(() => other.loadState(saved)).toThrow(/prefix state: unexpected tensors prompt_encoder.transform/));
    });
  });
});

describe("prefix tuning matches Hugging Face PEFT (fixtures from scripts/hf/make-prompt-fixtures.py)", () => {
  for (const name of ["llama", "gpt2"]) {
    it(`${name}: the same prefix gives PEFT's logits within 1e-4, and the same adapter_config.json`, async () => {
      const fixture = await loadFixture("prefix", name);
      try {
        const adapter = inject(fixture.model, { numVirtualTokens: 3 });
        adapter.loadState(new Map([["prompt_encoder.embedding.weight", fixture.adapter.get("prompt_embeddings")!]]));
        const logits = adapterLogits(adapter, fixture.ids, fixture.mask);
        expect(fixture.maxBaseDifference).toBeGreaterThan(0.5);
        expect(maxAbsDifference(logits, fixture.logits)).toBeLessThan(1e-4);
        expect(comparableConfig(adapter.adapterConfig())).toEqual(comparableConfig(fixture.adapterConfig));
        adapter.remove();
      } finally {
        fixture.model.dispose();
      }
    });
  }

  it("with projection: the MLP's output is the prefix PEFT computes, and is what the export saves", async () => {
    const fixture = await loadFixture("prefix", "llama-projection");
    try {
      const encoder = readSafetensors(await readFile(path.join(FIXTURES, "prefix/llama-projection/encoder.safetensors")), "encoder.safetensors").tensors;
      const adapter = inject(fixture.model, { numVirtualTokens: 3, projection: true, projectionHiddenSize: fixture.extra.encoderHiddenSize as number });
      // torch keeps Linear weights [out, in]; the trainer keeps kernels [in, out].
      const state: TensorMap = new Map();
      for (const [name, tensor] of encoder) {
        const transposed = name.endsWith(".weight") && name.startsWith("transform.");
        state.set(`prompt_encoder.${name}`, transposed ? transpose(tensor) : tensor);
      }
      adapter.loadState(state);
      expect(maxAbsDifference(adapterLogits(adapter, fixture.ids, fixture.mask), fixture.logits)).toBeLessThan(1e-4);
      const exported = adapter.exportTensors();
      expect([...exported.keys()]).toEqual([...fixture.adapter.keys()]);
      expect(maxAbsDifference(exported.get("prompt_embeddings")!.data, fixture.adapter.get("prompt_embeddings")!.data)).toBeLessThan(1e-5);
      expect(comparableConfig(adapter.adapterConfig())).toEqual(comparableConfig(fixture.adapterConfig));
      adapter.remove();
    } finally {
      fixture.model.dispose();
    }
  });
});

function transpose(tensor: { shape: number[]; data: Float32Array }): { shape: number[]; data: Float32Array } {
  const [rows, cols] = tensor.shape as [number, number];
  const data = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) data[c * rows + r] = tensor.data[r * cols + c]!;
  return { shape: [cols, rows], data };
}

/**
 * dL/d(every trainable value) from tfjs against central finite differences of the float64
 * reference models, which take the prefix as per-layer keys and values.
 */
describe("prefix gradients match finite differences of the float64 reference", () => {
  // The float64 GPT-2 reference takes no prefix; GPT-2's prefix forward is checked against PEFT above.
  for (const [family, projection] of [
    ["llama", false],
    ["llama", true],
  ] as const) {
    it(`${family}${projection ? " with projection" : ""}`, () => {
      const model = family === "llama" ? llama : gpt2;
      const folder = family === "llama" ? llamaFolder : gpt2Folder;
      const reference = family === "llama" ? referenceLlamaLogits : referenceGpt2Logits;
      withAdapter(model, { numVirtualTokens: 2, projection, ...(projection ? { projectionHiddenSize: 5 } : {}) }, (adapter) => {
        const { numLayers, keyValueHeads, headDim, tokenDim } = adapter.geometry;
        const vocab = model.config.vocabSize;
        const coefficients = Rng.fromSeed(21).fillUniform(new Float32Array(IDS.length * IDS[0]!.length * vocab), -1, 1);
        const variables = adapter.trainableVariables();
        const { value, grads } = tf.variableGrads(
          () =>
            tf.tidy(() => {
              const logits = adapter.forward({ inputIds: tf.tensor2d(IDS.flat(), [2, 6], "int32"), attentionMask: tf.tensor2d(MASK.flat(), [2, 6], "int32") });
              return tf.sum(tf.mul(logits, tf.tensor(coefficients, logits.shape)));
            }) as tf.Scalar,
          [...variables.values()],
        );

        // Parameters in float64, in the trainer's layouts; the table computed from them in float64.
        const parameters = new Map([...adapter.saveState()].map(([name, t]) => [name, { shape: t.shape, data: Float64Array.from(t.data) }]));
        const table = (): Float64Array => {
          const embedding = parameters.get("prompt_encoder.embedding.weight")!;
          if (!projection) return embedding.data;
          const layer = (x: Float64Array, rows: number, name: string, activation: (v: number) => number) => {
            const kernel = parameters.get(`prompt_encoder.transform.${name}.weight`)!;
            const bias = parameters.get(`prompt_encoder.transform.${name}.bias`)!.data;
            const [inFeatures, outFeatures] = kernel.shape as [number, number];
            const out = new Float64Array(rows * outFeatures);
            for (let r = 0; r < rows; r++) {
              for (let o = 0; o < outFeatures; o++) {
                let sum = bias[o]!;
                for (let i = 0; i < inFeatures; i++) sum += x[r * inFeatures + i]! * kernel.data[i * outFeatures + o]!;
                out[r * outFeatures + o] = activation(sum);
              }
            }
            return out;
          };
          return layer(layer(embedding.data, 2, "0", Math.tanh), 2, "2", (v) => v);
        };
        const loss = () => {
          const values = table();
          // PEFT's layout: token t, slot 2i (key) or 2i + 1 (value), head h, dimension d.
          const at = (t: number, slot: number, h: number, d: number) => values[t * 2 * numLayers * tokenDim + slot * tokenDim + h * headDim + d]!;
          const slotTensor = (slot: number) => [Array.from({ length: keyValueHeads }, (_, h) => Array.from({ length: 2 }, (_, t) => Array.from({ length: headDim }, (_, d) => at(t, slot, h, d))))];
          const prefix: ReferenceInputs["prefix"] = Array.from({ length: numLayers }, (_, i) => ({ key: slotTensor(2 * i), value: slotTensor(2 * i + 1) }));
          const logits = reference(folder.config, folder.weights as ReferenceWeights, { ids: IDS, mask: MASK, prefix }).flat(2);
          return logits.reduce((sum, v, i) => sum + v * coefficients[i]!, 0);
        };
        expect(Math.abs(loss() - value.dataSync()[0]!) / Math.abs(loss())).toBeLessThan(1e-5);

        const epsilon = 1e-5;
        const analytic: number[] = [];
        const numeric: number[] = [];
        for (const [name, variable] of variables) {
          const gradient = grads[variable.name]!.dataSync();
          const entry = parameters.get(name)!;
          for (let index = 0; index < entry.data.length; index += 3) {
            const original = entry.data[index]!;
            entry.data[index] = original + epsilon;
            const plus = loss();
            entry.data[index] = original - epsilon;
            const minus = loss();
            entry.data[index] = original;
            numeric.push((plus - minus) / (2 * epsilon));
            analytic.push(gradient[index]!);
          }
        }
        expect(Math.max(...numeric.map(Math.abs))).toBeGreaterThan(1e-2);
        expect(relativeError(analytic, numeric)).toBeLessThan(1e-4);
        tf.dispose([value, ...Object.values(grads)]);
      });
    });
  }
});

describe("prefix tuning under gradient checkpointing", () => {
  it("gives the same loss and gradients when each block is recomputed in the backward pass", () => {
    withAdapter(llama, { numVirtualTokens: 3, projection: true, projectionHiddenSize: 6 }, (adapter) => {
      const variables = [...adapter.trainableVariables().values()];
      const run = (gradientCheckpointing: boolean) => {
        const { value, grads } = tf.variableGrads(
          () =>
            tf.tidy(() => {
              const logits = adapter.forward({ inputIds: tf.tensor2d(IDS.flat(), [2, 6], "int32"), attentionMask: tf.tensor2d(MASK.flat(), [2, 6], "int32"), gradientCheckpointing });
              return tf.sum(tf.square(logits));
            }) as tf.Scalar,
          variables,
        );
        const out = { loss: value.dataSync()[0]!, gradients: variables.map((variable) => Array.from(grads[variable.name]!.dataSync())) };
        tf.dispose([value, ...Object.values(grads)]);
        return out;
      };
      const plain = run(false);
      const recomputed = run(true);
      expect(recomputed.loss).toBeCloseTo(plain.loss, 3);
      recomputed.gradients.forEach((gradient, i) => expect(relativeError(gradient, plain.gradients[i]!)).toBeLessThan(1e-5));
    });
  });
});

const steps = (events: ProgressEvent[]) => events.filter((event): event is Extract<ProgressEvent, { event: "step" }> => event.event === "step");

describe("prefix tuning in the training loop", () => {
  async function tinyJob(spec: Partial<FineTuneJob["spec"]>): Promise<TinyJob> {
    const job = await writeTinyJob({ spec });
    jobs.push(job);
    return job;
  }

  it("lowers the loss on a learnable task", async () => {
    const job = await tinyJob({
      method: { type: "prefix", prefix: { numVirtualTokens: 8 } },
      hyperparameters: { maxSteps: 60, batchSize: 4, learningRate: 0.2, scheduler: "constant", seed: 7 },
      checkpoint: { everySteps: 1000 },
    });
    const { result, events } = await runTinyJob(job);
    const losses = steps(events).map((event) => event.loss);
    const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
    expect(result.status).toBe("completed");
    expect(mean(losses.slice(-5))).toBeLessThan(mean(losses.slice(0, 3)) * 0.6);
  });

  it("continues a stopped run from its checkpoint to the same adapter, byte for byte (with projection)", async () => {
    const spec: Partial<FineTuneJob["spec"]> = {
      dataset: { train: "data/train.jsonl", format: "text", maxSeqLength: 32, evalFraction: 0.25 },
      method: { type: "prefix", prefix: { numVirtualTokens: 4, projection: true, projectionHiddenSize: 12 } },
      hyperparameters: { maxSteps: 6, batchSize: 2, gradientAccumulation: 2, learningRate: 0.01, warmupSteps: 2, weightDecay: 0.01, evalEverySteps: 3, seed: 11 },
      checkpoint: { everySteps: 3, keep: 2 },
    };
    const uninterrupted = await tinyJob(spec);
    await runTinyJob(uninterrupted);
    const interrupted = await tinyJob(spec);
    const controller = new AbortController();
    const first = await runTinyJob(interrupted, {}, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 3 && controller.abort() });
    expect(first.result).toMatchObject({ status: "stopped", step: 3 });
    const second = await runTinyJob(interrupted);
    expect(second.result.status).toBe("completed");
    const adapterOf = (job: TinyJob) => readFile(path.join(job.dir, "out", "adapter_model.safetensors"));
    expect(await adapterOf(interrupted)).toEqual(await adapterOf(uninterrupted));
    const metrics = async (job: TinyJob) => JSON.parse(await readFile(path.join(job.dir, "out", "training_metrics.json"), "utf8"));
    expect((await metrics(interrupted)).eval).toEqual((await metrics(uninterrupted)).eval);
  });
});

const python = huggingFacePython();

describe.skipIf(!python)("the export loads in Hugging Face PEFT", () => {
  for (const [family, options] of [
    ["llama", { numVirtualTokens: 3, projection: true, projectionHiddenSize: 10 }],
    ["gpt2", { numVirtualTokens: 2 }],
  ] as const) {
    it(`${family}: no missing or unexpected keys, PEFT's logits and loss equal the trainer's`, async () => {
      const model = family === "llama" ? llama : gpt2;
      const folder = family === "llama" ? llamaFolder : gpt2Folder;
      await withAdapterAsync(model, options, async (adapter) => {
        const labels = IDS.map((row, r) => row.map((id, t) => (MASK[r]![t] ? id : IGNORE_INDEX)));
        const peft = await checkInPeft(python!, adapter, folder.dir, { ids: IDS, mask: MASK, labels });
        expect(peft).toMatchObject({ keys: ["prompt_embeddings"], peftType: "PREFIX_TUNING" });
        expect(maxAbsDifference(adapterLogits(adapter, IDS, MASK), peft.logits)).toBeLessThan(1e-4);
        const batch = { rows: 2, seqLength: 6, inputIds: Int32Array.from(IDS.flat()), attentionMask: Int32Array.from(MASK.flat()), labels: Int32Array.from(labels.flat()) };
        const { lossSum, targetTokens } = evalBatchLoss(adapter, batch);
        expect(Math.abs(lossSum / targetTokens - peft.loss!) / peft.loss!).toBeLessThan(1e-5);
      });
    }, 120_000);
  }
});

async function withAdapterAsync(model: CausalLM, options: PrefixOptions, body: (adapter: PrefixAdapter) => Promise<void>): Promise<void> {
  const adapter = inject(model, options);
  try {
    await body(adapter);
  } finally {
    adapter.remove();
  }
}
