import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createModelFromStateDict, loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { readSafetensors } from "../../safetensors/safetensors.ts";
import { logitsOf, relativeError } from "../../testing/compare.ts";
import { lossesOfTinyRun, mergedFixtureError, resumedAndStraightOutputs } from "../../testing/method-training.ts";
import { checkGradients, float64Weights } from "../../testing/finite-differences.ts";
import { TestFolderStore } from "../../testing/folder-store.ts";
import { SAMPLE_IDS as IDS, SAMPLE_MASK as MASK, injectForTest, tensorIds, useTinyLlamaAndGpt2, usingAdapter } from "../../testing/method-tests.ts";
import { referenceGpt2Logits, referenceLlamaLogits, type ReferenceWeights } from "../../testing/reference.ts";
import { getMethod } from "../registry.ts";
import { ia3Defaults, resolveIa3Config, type Ia3Options } from "./config.ts";
import { ia3Method, ia3StateFromPeftTensors, type Ia3Adapter } from "./model.ts";

const FIXTURES = path.resolve(import.meta.dirname, "../../../tests/fixtures/hf/methods/ia3");

const tiny = useTinyLlamaAndGpt2();

/** With an IA3 adapter (rng seed 3) on `model`, runs `body`, then removes the adapter. */
function withAdapter<T>(model: CausalLM, options: Ia3Options, body: (adapter: Ia3Adapter) => T): T {
  return usingAdapter(injectForTest<Ia3Adapter>(ia3Method, model, options), body);
}

function perturb(adapter: Ia3Adapter, seed = 9): void {
  const rng = Rng.fromSeed(seed);
  const state = adapter.saveState();
  for (const tensor of state.values()) tensor.data = tensor.data.map(() => 1 + rng.uniform(-0.4, 0.4));
  adapter.loadState(state);
}

describe("IA3 configuration", () => {
  it("takes PEFT's targets and feed-forward modules for the architecture", () => {
    expect(resolveIa3Config({}, { architecture: "LlamaForCausalLM" })).toEqual({ targetModules: ["k_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"] });
    expect(resolveIa3Config(undefined, { architecture: "Qwen2ForCausalLM" })).toEqual({ targetModules: ["q_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"] });
    expect(resolveIa3Config({}, { architecture: "GPT2LMHeadModel" })).toEqual({ targetModules: ["c_attn", "mlp.c_proj"], feedforwardModules: ["mlp.c_proj"] });
    expect(resolveIa3Config({ targetModules: ["q_proj"] }, { architecture: "LlamaForCausalLM" })).toEqual({ targetModules: ["q_proj"], feedforwardModules: ["down_proj"] });
    expect(ia3Defaults("FalconForCausalLM")).toBeUndefined();
  });

  it("names the field of bad options", () => {
    expect(() => resolveIa3Config({}, { architecture: "FalconForCausalLM" }, "spec.method.ia3")).toThrow(/^spec\.method\.ia3\.targetModules: PEFT has no IA3 default for FalconForCausalLM/);
    expect(() => resolveIa3Config({ targetModules: ["k_proj"], feedforwardModules: ["down_proj"] }, { architecture: "LlamaForCausalLM" })).toThrow(
      'spec.method.feedforwardModules: "down_proj" must also be in targetModules',
    );
    expect(() => resolveIa3Config({ targetModules: [] }, { architecture: "LlamaForCausalLM" })).toThrow(/^spec\.method\.targetModules: must be a non-empty list/);
    expect(() => ia3Method.inject(tiny.llama, { targetModules: ["k_prj"] }, { rng: Rng.fromSeed(1), baseModelNameOrPath: "x" })).toThrow(
      'spec.method.targetModules: "k_prj" matches no linear module of LlamaForCausalLM',
    );
  });
});

describe("IA3", () => {
  it("is the registry's ia3 method, starts as the base model, and scales outputs of attention modules and inputs of feed-forward ones", () => {
    expect(getMethod("ia3")).toBe(ia3Method);
    for (const model of [tiny.llama, tiny.gpt2]) {
      const base = logitsOf(model, IDS, MASK);
      withAdapter(model, {}, (adapter) => {
        expect(logitsOf(model, IDS, MASK)).toEqual(base);
        perturb(adapter);
        expect(relativeError(logitsOf(model, IDS, MASK), base)).toBeGreaterThan(1e-2);
        expect(logitsOf(model, IDS, MASK, { disableAdapters: true })).toEqual(base);
      });
    }
    withAdapter(tiny.llama, {}, (adapter) => {
      expect([...adapter.exportTensors()].slice(0, 3).map(([name, tensor]) => [name, tensor.shape])).toEqual([
        ["base_model.model.model.layers.0.self_attn.k_proj.ia3_l", [16, 1]],
        ["base_model.model.model.layers.0.self_attn.v_proj.ia3_l", [16, 1]],
        ["base_model.model.model.layers.0.mlp.down_proj.ia3_l", [1, 48]],
      ]);
      expect(adapter.trainableParameterCount()).toBe(2 * (16 + 16 + 48));
    });
  });

  for (const family of ["llama", "gpt2"] as const) {
    it(`computes what PEFT computes for its own IA3 adapter with PEFT's defaults, and exports it the same way (${family})`, async () => {
      const folder = path.join(FIXTURES, family);
      const model = await loadModel(new TestFolderStore(path.join(folder, "model")));
      const expected = JSON.parse(await readFile(path.join(folder, "logits.json"), "utf8")) as { ids: number[][]; mask: number[][]; base: number[]; adapter: number[]; merged: number[] };
      const peftConfig = JSON.parse(await readFile(path.join(folder, "adapter/adapter_config.json"), "utf8")) as Record<string, unknown>;
      const file = path.join(folder, "adapter/adapter_model.safetensors");
      const peftTensors = readSafetensors(await readFile(file), file).tensors;
      try {
        withAdapter(model, {}, (adapter) => {
          adapter.loadState(ia3StateFromPeftTensors(peftTensors, file));
          const adapted = logitsOf(model, expected.ids, expected.mask);
          expect(relativeError(adapted, expected.base)).toBeGreaterThan(1e-2);
          expect(relativeError(adapted, expected.adapter)).toBeLessThan(1e-5);

          const exported = adapter.exportTensors();
          expect([...exported.keys()].sort()).toEqual([...peftTensors.keys()].sort());
          for (const [name, tensor] of peftTensors) {
            expect(exported.get(name)!.shape, name).toEqual(tensor.shape);
            expect(exported.get(name)!.data, name).toEqual(tensor.data);
          }
          const config = adapter.adapterConfig();
          for (const key of ["peft_type", "fan_in_fan_out", "init_ia3_weights", "modules_to_save", "task_type", "inference_mode"]) expect(config[key], key).toEqual(peftConfig[key]);
          for (const key of ["target_modules", "feedforward_modules"]) expect([...(config[key] as string[])].sort(), key).toEqual([...(peftConfig[key] as string[])].sort());

          const merged = createModelFromStateDict(model.config, adapter.merge());
          try {
            expect(relativeError(logitsOf(merged, expected.ids, expected.mask), expected.merged)).toBeLessThan(1e-5);
            expect(relativeError(logitsOf(merged, expected.ids, expected.mask), adapted)).toBeLessThan(1e-5);
          } finally {
            merged.dispose();
          }
        });
      } finally {
        model.dispose();
      }
    });

    it(`gradients match finite differences of the float64 reference with l folded into the weights (${family})`, () => {
      const model = family === "llama" ? tiny.llama : tiny.gpt2;
      const folder = family === "llama" ? tiny.llamaFolder : tiny.gpt2Folder;
      const reference = family === "llama" ? referenceLlamaLogits : referenceGpt2Logits;
      withAdapter(model, {}, (adapter) => {
        perturb(adapter);
        const result = checkGradients({
          forward: () => model.forward({ inputIds: tensorIds(IDS), attentionMask: tensorIds(MASK) }),
          variables: adapter.trainableVariables(),
          stride: 3,
          referenceLogits: (values) => {
            const weights = float64Weights(folder.weights);
            for (const [modulePath, layer] of adapter.layers) {
              const l = values.get(`${modulePath}.ia3_l`)!;
              const { inFeatures, outFeatures, weightLayout } = layer.module;
              const weight = weights.get(`${modulePath}.weight`)!.data;
              for (let o = 0; o < outFeatures; o++) {
                for (let i = 0; i < inFeatures; i++) {
                  const index = weightLayout === "linear" ? o * inFeatures + i : i * outFeatures + o;
                  weight[index] = weight[index]! * l[layer.feedforward ? i : o]!;
                }
              }
              const bias = weights.get(`${modulePath}.bias`)?.data;
              if (bias && !layer.feedforward) for (let o = 0; o < outFeatures; o++) bias[o] = bias[o]! * l[o]!;
            }
            return reference(folder.config, weights as ReferenceWeights, { ids: IDS, mask: MASK }).flat(2);
          },
        });
        expect(Math.abs(result.value - result.referenceValue) / Math.abs(result.referenceValue)).toBeLessThan(1e-5);
        expect(Math.max(...result.numeric.map(Math.abs))).toBeGreaterThan(1e-2);
        expect(relativeError(result.analytic, result.numeric)).toBeLessThan(1e-4);
      });
    });
  }
});

describe("kubetune merge of PEFT's own ia3 adapter", () => {
  for (const family of ["llama", "gpt2"] as const) {
    it(`writes a model that gives PEFT's merged logits within 1e-5 (${family})`, async () => {
      const { modules, error } = await mergedFixtureError(path.join(FIXTURES, family));
      expect(modules).toBeGreaterThan(0);
      expect(error).toBeLessThan(1e-5);
    });
  }
});

describe("ia3 in the training loop", () => {
  it("lowers the loss on a learnable task", async () => {
    const { first, last } = await lossesOfTinyRun({ type: "ia3" }, { learningRate: 0.2, maxSteps: 40, family: "gpt2" });
    // IA3 rescales a few hundred activations only: it learns less than LoRA can, but it learns.
    expect(last).toBeLessThan(0.85 * first);
  });

  it("resumes from a checkpoint to the same adapter, byte for byte", async () => {
    const { straight, resumed, resumedFrom } = await resumedAndStraightOutputs({ type: "ia3" }, ["adapter_model.safetensors"], { family: "gpt2" });
    expect(resumedFrom).toBe(4);
    expect(resumed).toEqual(straight);
  });
});
