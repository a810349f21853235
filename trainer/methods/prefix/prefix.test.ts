import { readFile } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { describe, expect, it } from "vitest";
import { IGNORE_INDEX } from "../../data/encode.ts";
import type { CausalLM } from "../../model/model.ts";
import { readSafetensors, type TensorMap } from "../../safetensors/safetensors.ts";
import { logitsOf, relativeError } from "../../testing/compare.ts";
import { checkGradients } from "../../testing/finite-differences.ts";
import { SAMPLE_IDS as IDS, SAMPLE_MASK as MASK, injectForTest, maxAbsDifference, tensorIds, useTinyLlamaAndGpt2, usingAdapter } from "../../testing/method-tests.ts";
import { lossesOfTinyRun, resumedAndStraightOutputs } from "../../testing/method-training.ts";
import { referenceGpt2Logits, referenceLlamaLogits, type ReferenceInputs, type ReferenceWeights } from "../../testing/reference.ts";
import { evalBatchLoss } from "../../train/step.ts";
import { getMethod } from "../registry.ts";
import { adapterLogits, checkInPeft, FIXTURES, huggingFacePython, loadFixture } from "../prompt/testing.ts";
import type { PrefixOptions } from "./config.ts";
import { prefixMethod, type PrefixAdapter } from "./model.ts";

const tiny = useTinyLlamaAndGpt2();

function inject(model: CausalLM, options: PrefixOptions = {}, seed = 3): PrefixAdapter {
  return injectForTest<PrefixAdapter>(prefixMethod, model, options, { seed });
}

/** With a prefix adapter on `model`, runs `body` (sync or async), then removes the adapter. */
function withAdapter<T>(model: CausalLM, options: PrefixOptions, body: (adapter: PrefixAdapter) => T): T {
  return usingAdapter(inject(model, options), body);
}

/** PEFT's config less what depends on where and with which PEFT version it was written. */
const comparableConfig = (config: Record<string, unknown>) => {
  const { peft_version: _version, base_model_name_or_path: _base, ...rest } = config;
  return rest;
};

describe("prefix tuning", () => {
  it("sizes the prefix per key/value head as PEFT does (grouped-query attention)", () => {
    withAdapter(tiny.llama, { numVirtualTokens: 5 }, (adapter) => {
      // 2 layers x (key, value) x 2 key/value heads x head_dim 8.
      expect(adapter.exportTensors().get("prompt_embeddings")!.shape).toEqual([5, 2 * 2 * 16]);
      expect(adapter.trainableParameterCount()).toBe(5 * 64);
      expect(adapter.adapterConfig()).toMatchObject({ peft_type: "PREFIX_TUNING", token_dim: 16, num_attention_heads: 2, num_layers: 2, num_virtual_tokens: 5, encoder_hidden_size: 16 });
      expect(Object.keys(adapter.adapterConfig())).toEqual(Object.keys(adapter.adapterConfig()).sort());
    });
    withAdapter(tiny.gpt2, { numVirtualTokens: 2, projection: true, projectionHiddenSize: 7 }, (adapter) => {
      expect(adapter.exportTensors().get("prompt_embeddings")!.shape).toEqual([2, 2 * 2 * 24]);
      expect(adapter.trainableParameterCount()).toBe(2 * 24 + (24 * 7 + 7) + (7 * 96 + 96));
      expect(adapter.adapterConfig()).toMatchObject({ token_dim: 24, num_attention_heads: 3, prefix_projection: true, encoder_hidden_size: 7 });
    });
  });

  it("initialises the prefix from N(0, 1) with the seed, as torch.nn.Embedding", () => {
    const values = withAdapter(tiny.llama, { numVirtualTokens: 20 }, (adapter) => adapter.exportTensors().get("prompt_embeddings")!.data);
    const again = withAdapter(tiny.llama, { numVirtualTokens: 20 }, (adapter) => adapter.exportTensors().get("prompt_embeddings")!.data);
    expect(again).toEqual(values);
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
    expect(Math.abs(mean)).toBeLessThan(0.1);
    expect(Math.abs(variance - 1)).toBeLessThan(0.1);
  });

  it("leaves the base model alone with disableAdapters and after removal", () => {
    const base = logitsOf(tiny.llama, IDS, MASK);
    withAdapter(tiny.llama, {}, (adapter) => {
      const adapted = adapterLogits(adapter, IDS, MASK);
      expect(relativeError(adapted, base)).toBeGreaterThan(1e-2);
      expect(tf.tidy(() => adapter.forward({ inputIds: tf.tensor2d(IDS.flat(), [2, 6], "int32"), attentionMask: tf.tensor2d(MASK.flat(), [2, 6], "int32"), disableAdapters: true }).dataSync())).toEqual(base);
    });
    expect(logitsOf(tiny.llama, IDS, MASK)).toEqual(base);
  });

  it("refuses invalid options with the field's path, and has no merge", () => {
    expect(() => inject(tiny.llama, { numVirtualTokens: 0 })).toThrow("spec.method.numVirtualTokens: must be an integer from 1 to 512, got 0");
    expect(() => inject(tiny.llama, { projectionHiddenSize: 8 })).toThrow("spec.method.projectionHiddenSize: is only used with projection: true");
    expect(() => inject(tiny.llama, { projection: "yes" as unknown as boolean })).toThrow('spec.method.projection: must be true or false, got "yes"');
    withAdapter(tiny.llama, {}, (adapter) => expect(() => adapter.merge()).toThrow(/nothing to merge; load the adapter with PEFT/));
    expect(getMethod("prefix")).toBe(prefixMethod);
  });

  it("saves and restores its state exactly, and refuses a state of other options", () => {
    withAdapter(tiny.llama, { projection: true, numVirtualTokens: 3 }, (adapter) => {
      const saved = adapter.saveState();
      const logits = adapterLogits(adapter, IDS, MASK);
      withAdapter(tiny.llama, { projection: true, numVirtualTokens: 3 }, (other) => {
        other.loadState(saved);
        expect(adapterLogits(other, IDS, MASK)).toEqual(logits);
      });
      withAdapter(tiny.llama, { numVirtualTokens: 3 }, (other) => expect(() => other.loadState(saved)).toThrow(/prefix state: unexpected tensors prompt_encoder.transform/));
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
      const model = family === "llama" ? tiny.llama : tiny.gpt2;
      const folder = family === "llama" ? tiny.llamaFolder : tiny.gpt2Folder;
      const reference = family === "llama" ? referenceLlamaLogits : referenceGpt2Logits;
      withAdapter(model, { numVirtualTokens: 2, projection, ...(projection ? { projectionHiddenSize: 5 } : {}) }, (adapter) => {
        const { numLayers, keyValueHeads, headDim, tokenDim } = adapter.geometry;
        const variables = adapter.trainableVariables();
        // The table computed in float64 from the parameters, which come in the trainer's layouts.
        const table = (parameters: ReadonlyMap<string, Float64Array>): Float64Array => {
          const embedding = parameters.get("prompt_encoder.embedding.weight")!;
          if (!projection) return embedding;
          const layer = (x: Float64Array, rows: number, name: string, activation: (v: number) => number) => {
            const kernel = parameters.get(`prompt_encoder.transform.${name}.weight`)!;
            const bias = parameters.get(`prompt_encoder.transform.${name}.bias`)!;
            const [inFeatures, outFeatures] = variables.get(`prompt_encoder.transform.${name}.weight`)!.shape as [number, number];
            const out = new Float64Array(rows * outFeatures);
            for (let r = 0; r < rows; r++) {
              for (let o = 0; o < outFeatures; o++) {
                let sum = bias[o]!;
                for (let i = 0; i < inFeatures; i++) sum += x[r * inFeatures + i]! * kernel[i * outFeatures + o]!;
                out[r * outFeatures + o] = activation(sum);
              }
            }
            return out;
          };
          return layer(layer(embedding, 2, "0", Math.tanh), 2, "2", (v) => v);
        };
        const result = checkGradients({
          forward: () => adapter.forward({ inputIds: tensorIds(IDS), attentionMask: tensorIds(MASK) }),
          variables,
          referenceLogits: (parameters) => {
            const values = table(parameters);
            // PEFT's layout: token t, slot 2i (key) or 2i + 1 (value), head h, dimension d.
            const at = (t: number, slot: number, h: number, d: number) => values[t * 2 * numLayers * tokenDim + slot * tokenDim + h * headDim + d]!;
            const slotTensor = (slot: number) => [Array.from({ length: keyValueHeads }, (_, h) => Array.from({ length: 2 }, (_, t) => Array.from({ length: headDim }, (_, d) => at(t, slot, h, d))))];
            const prefix: ReferenceInputs["prefix"] = Array.from({ length: numLayers }, (_, i) => ({ key: slotTensor(2 * i), value: slotTensor(2 * i + 1) }));
            return reference(folder.config, folder.weights as ReferenceWeights, { ids: IDS, mask: MASK, prefix }).flat(2);
          },
          stride: 3,
        });
        expect(Math.abs(result.referenceValue - result.value) / Math.abs(result.referenceValue)).toBeLessThan(1e-5);
        expect(Math.max(...result.numeric.map(Math.abs))).toBeGreaterThan(1e-2);
        expect(relativeError(result.analytic, result.numeric)).toBeLessThan(1e-4);
      });
    });
  }
});

describe("prefix tuning under gradient checkpointing", () => {
  it("gives the same loss and gradients when each block is recomputed in the backward pass", () => {
    withAdapter(tiny.llama, { numVirtualTokens: 3, projection: true, projectionHiddenSize: 6 }, (adapter) => {
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

describe("prefix tuning in the training loop", () => {
  it("lowers the loss on a learnable task", async () => {
    const { first, last } = await lossesOfTinyRun({ type: "prefix", prefix: { numVirtualTokens: 8 } }, { maxSteps: 60, learningRate: 0.2 });
    expect(last).toBeLessThan(first * 0.6);
  });

  it("continues a stopped run from its checkpoint to the same adapter, byte for byte (with projection)", async () => {
    const method = { type: "prefix", prefix: { numVirtualTokens: 4, projection: true, projectionHiddenSize: 12 } } as const;
    const { straight, resumed, resumedFrom } = await resumedAndStraightOutputs(method, ["adapter_model.safetensors", "training_metrics.json"], { hyperparameters: { maxSteps: 6 }, stopAtStep: 3 });
    expect(resumedFrom).toBe(3);
    expect(resumed[0]).toEqual(straight[0]);
    const evalMetrics = (metrics: Buffer) => JSON.parse(metrics.toString("utf8")).eval;
    expect(evalMetrics(resumed[1]!)).toEqual(evalMetrics(straight[1]!));
  });
});

const python = huggingFacePython();

describe.skipIf(!python)("the export loads in Hugging Face PEFT", () => {
  for (const [family, options] of [
    ["llama", { numVirtualTokens: 3, projection: true, projectionHiddenSize: 10 }],
    ["gpt2", { numVirtualTokens: 2 }],
  ] as const) {
    it(`${family}: no missing or unexpected keys, PEFT's logits and loss equal the trainer's`, async () => {
      const model = family === "llama" ? tiny.llama : tiny.gpt2;
      const folder = family === "llama" ? tiny.llamaFolder : tiny.gpt2Folder;
      await withAdapter(model, options, async (adapter) => {
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

