import { rm } from "node:fs/promises";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IGNORE_INDEX } from "../../data/encode.ts";
import { loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { relativeError } from "../../testing/compare.ts";
import { checkGradients } from "../../testing/finite-differences.ts";
import { injectForTest, maxAbsDifference, tensorIds, useTinyLlamaAndGpt2, usingAdapter } from "../../testing/method-tests.ts";
import { lossesOfTinyRun, resumedAndStraightOutputs } from "../../testing/method-training.ts";
import { referenceLlamaLogits, type ReferenceInputs, type ReferenceWeights } from "../../testing/reference.ts";
import { TINY_GEMMA3, TINY_PHI3, TINY_QWEN3, writeTinyModel, type TinyModel } from "../../testing/tiny-models.ts";
import { testTokenizer } from "../../tokenizer/test-tokenizer.ts";
import { evalBatchLoss } from "../../train/step.ts";
import type { Adapter } from "../method.ts";
import type { PrefixAdapter } from "../prefix/model.ts";
import { adapterLogits, checkInPeft, huggingFacePython } from "../prompt/testing.ts";
import { getMethod } from "../registry.ts";
import type { SkTuningOptions } from "./config.ts";
import { descriptionTokens, skTuningMethod } from "./model.ts";
import { meaningfulWords } from "./words.ts";

const DESCRIPTION = "Say hello to the world and answer the question";
const tokenizer = testTokenizer();
const IDS = [
  tokenizer.encode("The cat sat on the mat.", { addSpecialTokens: true }).slice(0, 6),
  tokenizer.encode("What is the capital", { addSpecialTokens: true }).slice(0, 6),
];
const MASK = [IDS[0]!.map(() => 1), IDS[1]!.map((_, t) => (t < 4 ? 1 : 0))];

const tiny = useTinyLlamaAndGpt2({ vocabSize: tokenizer.vocabSize });
/** The architectures whose keys differ from Llama's: q/k norms (Qwen3, Gemma 3), a local rotary base and sliding layers (Gemma 3), fused qkv_proj and partial rotary (Phi-3). */
const others = new Map<string, { folder: TinyModel; model: CausalLM }>();
const OTHER_CONFIGS = { qwen3: TINY_QWEN3, gemma3: TINY_GEMMA3, phi3: TINY_PHI3 };

beforeAll(async () => {
  for (const [name, config] of Object.entries(OTHER_CONFIGS)) {
    const folder = await writeTinyModel({ ...config, vocab_size: tokenizer.vocabSize }, { seed: 13 });
    others.set(name, { folder, model: await loadModel(folder.store) });
  }
});

afterAll(async () => {
  for (const { folder, model } of others.values()) {
    model.dispose();
    await rm(folder.dir, { recursive: true, force: true });
  }
});

function inject(model: CausalLM, options: SkTuningOptions): Adapter {
  return injectForTest(skTuningMethod, model, options, { tokenizer });
}

/** With an SK-tuning adapter on `model`, runs `body` (sync or async), then removes the adapter. */
function withAdapter<T>(model: CausalLM, options: SkTuningOptions, body: (adapter: Adapter) => T): T {
  return usingAdapter(inject(model, options), body);
}

/** The base model's logits for each row with `lead` written before it, at the row's own positions. */
function baseLogitsAfter(model: CausalLM, lead: number[]): Float32Array {
  return tf.tidy(() => {
    const rows = IDS.map((row) => [...lead, ...row]);
    const mask = MASK.map((row) => [...lead.map(() => 1), ...row]);
    const shape: [number, number] = [rows.length, rows[0]!.length];
    const logits = model.forward({ inputIds: tf.tensor2d(rows.flat(), shape, "int32"), attentionMask: tf.tensor2d(mask.flat(), shape, "int32") });
    return tf.slice(logits, [0, lead.length, 0], [-1, -1, -1]).dataSync() as Float32Array;
  });
}

describe("SK-tuning's meaningful words", () => {
  it("keeps the content words of the description, in order, deterministically", () => {
    expect(meaningfulWords("Classify the sentiment of this review as positive or negative")).toEqual(["Classify", "sentiment", "review", "positive", "negative"]);
    expect(meaningfulWords("Is it not true?")).toEqual(["not", "true"]);
    expect(meaningfulWords("what is it")).toEqual(["what", "is", "it"]);
  });

  it("tokenizes them after BOS when the tokenizer starts texts with it", () => {
    const ids = descriptionTokens(DESCRIPTION, tokenizer);
    expect(ids[0]).toBe(tokenizer.bosId);
    expect(tokenizer.decode(ids, { skipSpecialTokens: true })).toBe("Say hello world answer question");
    expect(() => descriptionTokens(DESCRIPTION, undefined)).toThrow("spec.method.description: SK-tuning needs the model's tokenizer");
  });
});

describe("SK-tuning starts from the frozen model's reading of the description", () => {
  const lead = () => descriptionTokens(DESCRIPTION, tokenizer);
  const modelOf = (family: string) => (family === "llama" ? tiny.llama : family === "gpt2" ? tiny.gpt2 : others.get(family)!.model);
  for (const family of ["llama", "gpt2", ...Object.keys(OTHER_CONFIGS)]) {
    for (const variant of ["prompt", "prefix"] as const) {
      for (const projection of [false, true]) {
        it(`${family}, ${variant}${projection ? ", with projection" : ""}: step 0 equals the base model reading the meaningful words before the input`, async () => {
          const model = modelOf(family);
          const expected = baseLogitsAfter(model, lead());
          await withAdapter(model, { description: DESCRIPTION, variant, projection }, (adapter) => {
            const logits = adapterLogits(adapter, IDS, MASK);
            // The prefix holds the model's own keys and values (CausalLM.keyValues): float32 rounding apart.
            expect(relativeError(logits, expected)).toBeLessThan(1e-5);
            const withoutLead = tf.tidy(() => adapter.forward({ inputIds: tf.tensor2d(IDS.flat(), [2, 6], "int32"), attentionMask: tf.tensor2d(MASK.flat(), [2, 6], "int32"), disableAdapters: true }).dataSync());
            expect(relativeError(logits, withoutLead)).toBeGreaterThan(1e-3);
          });
        });
      }
    }
  }

  it("exports a PEFT prefix-tuning or prompt-tuning adapter as long as the meaningful words' tokens", async () => {
    const tokens = lead().length;
    await withAdapter(tiny.llama, { description: DESCRIPTION, variant: "prefix" }, (adapter) => {
      expect(adapter.type).toBe("skTuning");
      expect(adapter.exportTensors().get("prompt_embeddings")!.shape).toEqual([tokens, 2 * 2 * 16]);
      expect(adapter.adapterConfig()).toMatchObject({ peft_type: "PREFIX_TUNING", num_virtual_tokens: tokens, prefix_projection: false, token_dim: 16 });
      expect(() => adapter.merge()).toThrow(/nothing to merge/);
    });
    await withAdapter(tiny.llama, { description: DESCRIPTION, variant: "prompt", projection: true }, (adapter) => {
      expect(adapter.exportTensors().get("prompt_embeddings")!.shape).toEqual([tokens, 32]);
      expect(adapter.adapterConfig()).toMatchObject({ peft_type: "PROMPT_TUNING", num_virtual_tokens: tokens, prompt_tuning_init: "RANDOM" });
      expect(adapter.trainableParameterCount()).toBe(32 * 32 + 32);
    });
    await withAdapter(tiny.llama, { description: DESCRIPTION, variant: "prefix", projection: true }, (adapter) => {
      // A map per layer and per key/value over head_dim 8.
      expect(adapter.trainableParameterCount()).toBe(2 * 2 * (8 * 8 + 8));
    });
  });

  it("refuses invalid options with the field's path", () => {
    expect(() => inject(tiny.llama, {})).toThrow(/^spec\.method\.description: is required/);
    expect(() => inject(tiny.llama, { description: DESCRIPTION, variant: "both" as "prefix" })).toThrow('spec.method.variant: must be prefix or prompt, got "both"');
    expect(getMethod("skTuning")).toBe(skTuningMethod);
  });
});

/** dL/d(the projection map) against finite differences of the float64 reference (prefix variant). */
describe("SK-tuning gradients match finite differences of the float64 reference", () => {
  it("prefix variant with projection, Llama", async () => {
    await withAdapter(tiny.llama, { description: DESCRIPTION, variant: "prefix", projection: true }, (adapter) => {
      const { numLayers, keyValueHeads, headDim, tokenDim } = (adapter as PrefixAdapter).geometry;
      const tokens = (adapter as PrefixAdapter).virtualTokens;
      const variables = adapter.trainableVariables();
      // Move the map off the identity so every term of its gradient is exercised.
      const rng = Rng.fromSeed(5);
      for (const variable of variables.values()) {
        tf.tidy(() => variable.assign(tf.add(variable, tf.tensor(rng.fillUniform(new Float32Array(variable.size), -0.2, 0.2), variable.shape))));
      }
      const frozen = (() => {
        const weight = variables.get("sk_tuning.key_value_projection.weight")!;
        const saved = tf.tidy(() => weight.clone());
        const identity = tf.tidy(() => tf.tile(tf.reshape(tf.eye(headDim), [1, headDim, headDim]), [2 * numLayers, 1, 1]));
        const bias = variables.get("sk_tuning.key_value_projection.bias")!;
        const savedBias = tf.tidy(() => bias.clone());
        weight.assign(identity);
        bias.assign(tf.zerosLike(bias));
        const table = Float64Array.from(adapter.exportTensors().get("prompt_embeddings")!.data);
        weight.assign(saved);
        bias.assign(savedBias);
        tf.dispose([saved, identity, savedBias]);
        return table;
      })();
      const result = checkGradients({
        forward: () => adapter.forward({ inputIds: tensorIds(IDS), attentionMask: tensorIds(MASK) }),
        variables,
        referenceLogits: (parameters) => {
          const w = parameters.get("sk_tuning.key_value_projection.weight")!;
          const b = parameters.get("sk_tuning.key_value_projection.bias")!;
          const slot = (s: number) => [
            Array.from({ length: keyValueHeads }, (_, h) =>
              Array.from({ length: tokens }, (_, t) =>
                Array.from({ length: headDim }, (_, o) => {
                  let sum = b[s * headDim + o]!;
                  for (let i = 0; i < headDim; i++) sum += frozen[t * 2 * numLayers * tokenDim + s * tokenDim + h * headDim + i]! * w[s * headDim * headDim + i * headDim + o]!;
                  return sum;
                }),
              ),
            ),
          ];
          const prefix: ReferenceInputs["prefix"] = Array.from({ length: numLayers }, (_, i) => ({ key: slot(2 * i), value: slot(2 * i + 1) }));
          return referenceLlamaLogits(tiny.llamaFolder.config, tiny.llamaFolder.weights as ReferenceWeights, { ids: IDS, mask: MASK, prefix }).flat(2);
        },
        stride: 3,
      });
      expect(Math.abs(result.referenceValue - result.value) / Math.abs(result.referenceValue)).toBeLessThan(1e-5);
      expect(Math.max(...result.numeric.map(Math.abs))).toBeGreaterThan(1e-2);
      expect(relativeError(result.analytic, result.numeric)).toBeLessThan(1e-4);
    });
  });
});

describe("SK-tuning in the training loop", () => {
  it("lowers the loss on a learnable task (prefix variant)", async () => {
    const { first, last } = await lossesOfTinyRun({ type: "skTuning", skTuning: { description: DESCRIPTION, variant: "prefix" } }, { maxSteps: 60, learningRate: 0.2 });
    expect(last).toBeLessThan(first * 0.6);
  });

  it("continues a stopped run from its checkpoint to the same adapter, byte for byte (prompt variant, projection)", async () => {
    const method = { type: "skTuning", skTuning: { description: DESCRIPTION, variant: "prompt", projection: true } } as const;
    const { straight, resumed, resumedFrom } = await resumedAndStraightOutputs(method, ["adapter_model.safetensors"], { hyperparameters: { maxSteps: 6 }, stopAtStep: 3 });
    expect(resumedFrom).toBe(3);
    expect(resumed).toEqual(straight);
  });
});

const python = huggingFacePython();

describe.skipIf(!python)("the export loads in Hugging Face PEFT", () => {
  for (const variant of ["prefix", "prompt"] as const) {
    it(`${variant} variant: no missing or unexpected keys, PEFT's logits and loss equal the trainer's`, async () => {
      await withAdapter(tiny.llama, { description: DESCRIPTION, variant, projection: true }, async (adapter) => {
        const labels = IDS.map((row, r) => row.map((id, t) => (MASK[r]![t] && t > 0 ? id : IGNORE_INDEX)));
        const peft = await checkInPeft(python!, adapter, tiny.llamaFolder.dir, { ids: IDS, mask: MASK, labels });
        expect(peft).toMatchObject({ keys: ["prompt_embeddings"], peftType: variant === "prefix" ? "PREFIX_TUNING" : "PROMPT_TUNING" });
        expect(maxAbsDifference(adapterLogits(adapter, IDS, MASK), peft.logits)).toBeLessThan(1e-4);
        const batch = { rows: 2, seqLength: 6, inputIds: Int32Array.from(IDS.flat()), attentionMask: Int32Array.from(MASK.flat()), labels: Int32Array.from(labels.flat()) };
        const { lossSum, targetTokens } = evalBatchLoss(adapter, batch);
        expect(Math.abs(lossSum / targetTokens - peft.loss!) / peft.loss!).toBeLessThan(1e-5);
      });
    }, 120_000);
  }
});
