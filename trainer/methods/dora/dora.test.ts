import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { createModelFromStateDict, loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { readSafetensors, writeSafetensors } from "../../safetensors/safetensors.ts";
import { logitsOf, relativeError } from "../../testing/compare.ts";
import { lossesOfTinyRun, mergedFixtureError, resumedAndStraightOutputs } from "../../testing/method-training.ts";
import { checkGradients, float64Weights } from "../../testing/finite-differences.ts";
import { TestFolderStore } from "../../testing/folder-store.ts";
import { SAMPLE_IDS as IDS, SAMPLE_MASK as MASK, injectForTest, tensorIds, useTinyLlamaAndGpt2, usingAdapter } from "../../testing/method-tests.ts";
import { referenceGpt2Logits, referenceLlamaLogits, type ReferenceWeights } from "../../testing/reference.ts";
import type { LoraOptions } from "../lora/config.ts";
import { getMethod } from "../registry.ts";
import { doraMethod, stateFromPeftTensors, type DoraAdapter } from "./model.ts";

const FIXTURES = path.resolve(import.meta.dirname, "../../../tests/fixtures/hf/methods/dora");

const tiny = useTinyLlamaAndGpt2();

/** With a DoRA adapter (rng seed 3) on `model`, runs `body`, then removes the adapter. */
function withAdapter<T>(model: CausalLM, options: LoraOptions, body: (adapter: DoraAdapter) => T): T {
  return usingAdapter(injectForTest<DoraAdapter>(doraMethod, model, options), body);
}

/** Moves B and the magnitudes away from their initial values, as training would. */
function perturb(adapter: DoraAdapter, seed = 9): void {
  const rng = Rng.fromSeed(seed);
  const state = adapter.saveState();
  for (const [name, tensor] of state) {
    if (name.endsWith(".lora_B")) tensor.data = rng.fillUniform(new Float32Array(tensor.data.length), -0.5, 0.5);
    if (name.endsWith(".lora_magnitude_vector")) tensor.data = tensor.data.map((value) => value * (1 + rng.uniform(-0.3, 0.3)));
  }
  adapter.loadState(state);
}

describe("DoRA", () => {
  it("is the registry's dora method and starts as the base model, with m = the row norms of W", () => {
    expect(getMethod("dora")).toBe(doraMethod);
    for (const model of [tiny.llama, tiny.gpt2]) {
      const base = logitsOf(model, IDS, MASK);
      withAdapter(model, { targetModules: "all-linear", r: 4, alpha: 16 }, (adapter) => {
        expect(relativeError(logitsOf(model, IDS, MASK), base)).toBeLessThan(1e-6);
        perturb(adapter);
        expect(relativeError(logitsOf(model, IDS, MASK), base)).toBeGreaterThan(1e-2);
        expect(logitsOf(model, IDS, MASK, { disableAdapters: true })).toEqual(base);
      });
    }
    withAdapter(tiny.llama, {}, (adapter) => {
      const q = adapter.layers.get("model.layers.0.self_attn.q_proj")!;
      const weight = tiny.llamaFolder.weights.get("model.layers.0.self_attn.q_proj.weight")!;
      const [out, inFeatures] = weight.shape as [number, number];
      const norms = Array.from({ length: out }, (_, o) => Math.hypot(...weight.data.slice(o * inFeatures, (o + 1) * inFeatures)));
      expect(relativeError(q.magnitude.dataSync(), norms)).toBeLessThan(1e-6);
      expect(adapter.trainableParameterCount()).toBe(2 * (8 * 32 + 8 * 32 + 32 + 8 * 32 + 8 * 16 + 16));
    });
  });

  it("exports LoRA's tensors plus lora_magnitude_vector and use_dora: true", () => {
    withAdapter(tiny.gpt2, { targetModules: ["c_attn"], r: 2 }, (adapter) => {
      const tensors = adapter.exportTensors();
      expect([...tensors.keys()].slice(0, 3)).toEqual([
        "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
        "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
        "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector",
      ]);
      expect(tensors.get("base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector")!.shape).toEqual([72]);
      expect(adapter.adapterConfig()).toMatchObject({ peft_type: "LORA", use_dora: true, fan_in_fan_out: true, r: 2 });
    });
  });

  for (const family of ["llama", "gpt2"] as const) {
    it(`computes what PEFT computes for its own DoRA adapter, and exports it under the same names (${family})`, async () => {
      const folder = path.join(FIXTURES, family);
      const model = await loadModel(new TestFolderStore(path.join(folder, "model")));
      const expected = JSON.parse(await readFile(path.join(folder, "logits.json"), "utf8")) as { ids: number[][]; mask: number[][]; base: number[]; adapter: number[]; merged: number[] };
      const peftConfig = JSON.parse(await readFile(path.join(folder, "adapter/adapter_config.json"), "utf8")) as Record<string, unknown>;
      const file = path.join(folder, "adapter/adapter_model.safetensors");
      const peftTensors = readSafetensors(await readFile(file), file).tensors;
      try {
        expect(relativeError(logitsOf(model, expected.ids, expected.mask), expected.base)).toBeLessThan(1e-5);
        const options = { r: peftConfig.r as number, alpha: peftConfig.lora_alpha as number, targetModules: peftConfig.target_modules as string[] };
        withAdapter(model, options, (adapter) => {
          adapter.loadState(stateFromPeftTensors(peftTensors, file));
          const adapted = logitsOf(model, expected.ids, expected.mask);
          expect(relativeError(adapted, expected.base)).toBeGreaterThan(1e-2);
          expect(relativeError(adapted, expected.adapter)).toBeLessThan(1e-5);

          const exported = adapter.exportTensors();
          expect([...exported.keys()].sort()).toEqual([...peftTensors.keys()].sort());
          for (const [name, tensor] of peftTensors) {
            expect(exported.get(name)!.shape, name).toEqual(tensor.shape);
            expect(relativeError(exported.get(name)!.data, tensor.data), name).toBeLessThan(1e-6);
          }
          const config = adapter.adapterConfig();
          for (const key of ["peft_type", "use_dora", "r", "lora_alpha", "fan_in_fan_out", "use_rslora", "bias", "task_type"]) {
            expect(config[key], key).toEqual(peftConfig[key]);
          }

          const merged = createModelFromStateDict(model.config, adapter.merge());
          try {
            expect(relativeError(logitsOf(merged, expected.ids, expected.mask), expected.merged)).toBeLessThan(1e-5);
          } finally {
            merged.dispose();
          }
        });
      } finally {
        model.dispose();
      }
    });
  }

  for (const [family, options] of [
    ["llama", { targetModules: ["q_proj", "v_proj", "down_proj"], r: 2, alpha: 6 }],
    ["gpt2", { targetModules: ["c_attn", "c_proj", "c_fc"], r: 2, alpha: 5 }],
  ] as const) {
    it(`merged weights give the adapter's logits within 1e-5 (${family})`, () => {
      const model = family === "llama" ? tiny.llama : tiny.gpt2;
      withAdapter(model, options, (adapter) => {
        perturb(adapter);
        const adapted = logitsOf(model, IDS, MASK);
        const merged = createModelFromStateDict(model.config, adapter.merge());
        try {
          expect(relativeError(logitsOf(merged, IDS, MASK), adapted)).toBeLessThan(1e-5);
        } finally {
          merged.dispose();
        }
      });
    });

    /**
     * dL/dA, dL/dB and dL/dm against finite differences of the float64 reference with the merged
     * weight (m / n) ⊙ (W + s·B A), n held at its unperturbed value: PEFT's detached norm, whose
     * gradient is not the gradient of the undetached function.
     */
    it(`gradients match finite differences of the float64 reference with n detached (${family})`, () => {
      const model = family === "llama" ? tiny.llama : tiny.gpt2;
      const folder = family === "llama" ? tiny.llamaFolder : tiny.gpt2Folder;
      const reference = family === "llama" ? referenceLlamaLogits : referenceGpt2Logits;
      withAdapter(model, options, (adapter) => {
        perturb(adapter);
        const norms = new Map([...adapter.layers].map(([modulePath, layer]) => [modulePath, layer.weightNorm().dataSync()]));
        const result = checkGradients({
          forward: () => model.forward({ inputIds: tensorIds(IDS), attentionMask: tensorIds(MASK) }),
          variables: adapter.trainableVariables(),
          referenceLogits: (values) => {
            const weights = float64Weights(folder.weights);
            for (const [modulePath, layer] of adapter.layers) {
              const a = values.get(`${modulePath}.lora_A`)!;
              const b = values.get(`${modulePath}.lora_B`)!;
              const m = values.get(`${modulePath}.lora_magnitude_vector`)!;
              const n = norms.get(modulePath)!;
              const { inFeatures, outFeatures, weightLayout } = layer.module;
              const weight = weights.get(`${modulePath}.weight`)!.data;
              for (let o = 0; o < outFeatures; o++) {
                for (let i = 0; i < inFeatures; i++) {
                  let update = 0;
                  for (let k = 0; k < layer.r; k++) update += a[i * layer.r + k]! * b[k * outFeatures + o]!;
                  const index = weightLayout === "linear" ? o * inFeatures + i : i * outFeatures + o;
                  weight[index] = (m[o]! / n[o]!) * (weight[index]! + layer.scale * update);
                }
              }
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

  it("applies dropout to the DoRA branch only in training, as PEFT does", () => {
    const run = (dropout: number, training: boolean) =>
      withAdapter(tiny.llama, { dropout, targetModules: ["q_proj", "v_proj"] }, (adapter) => {
        perturb(adapter);
        return logitsOf(tiny.llama, IDS, MASK, { training });
      });
    expect(run(0.5, false)).toEqual(run(0, false));
    expect(run(0.5, true)).toEqual(run(0.5, true));
    expect(relativeError(run(0.5, true), run(0, false))).toBeGreaterThan(1e-3);
  });

  it("writes a safetensors file PEFT's loader reads back to the same state", () => {
    withAdapter(tiny.llama, {}, (adapter) => {
      perturb(adapter);
      const bytes = writeSafetensors(adapter.exportTensors());
      const state = stateFromPeftTensors(readSafetensors(bytes, "adapter_model.safetensors").tensors, "adapter_model.safetensors");
      expect([...state.keys()]).toEqual([...adapter.saveState().keys()]);
      for (const [name, tensor] of adapter.saveState()) expect(state.get(name)!.data, name).toEqual(tensor.data);
    });
  });
});

describe("kubetune merge of PEFT's own dora adapter", () => {
  for (const family of ["llama", "gpt2"] as const) {
    it(`writes a model that gives PEFT's merged logits within 1e-5 (${family})`, async () => {
      const { modules, error } = await mergedFixtureError(path.join(FIXTURES, family));
      expect(modules).toBeGreaterThan(0);
      expect(error).toBeLessThan(1e-5);
    });
  }
});

describe("dora in the training loop", () => {
  it("lowers the loss on a learnable task", async () => {
    const { first, last } = await lossesOfTinyRun({ type: "dora", dora: { r: 8, alpha: 16, targetModules: ["all-linear"] } }, { learningRate: 0.01 });
    expect(last).toBeLessThan(first / 2);
  });

  it("resumes from a checkpoint to the same adapter, byte for byte", async () => {
    const { straight, resumed, resumedFrom } = await resumedAndStraightOutputs({ type: "dora", dora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj", "down_proj"] } }, ["adapter_model.safetensors"]);
    expect(resumedFrom).toBe(4);
    expect(resumed).toEqual(straight);
  });
});
