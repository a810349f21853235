import * as tf from "@tensorflow/tfjs-core";
import { describe, expect, it } from "vitest";
import { createModelFromStateDict } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { readSafetensors, writeSafetensors, type TensorMap } from "../../safetensors/safetensors.ts";
import { logitsOf, relativeError } from "../../testing/compare.ts";
import { SAMPLE_IDS as IDS, SAMPLE_MASK as MASK, injectForTest, randomizeLoraB, useTinyLlamaAndGpt2, usingAdapter } from "../../testing/method-tests.ts";
import { referenceGpt2Logits, referenceLlamaLogits, type ReferenceWeights } from "../../testing/reference.ts";
import { getMethod, methodTypes } from "../registry.ts";
import type { LoraAdapter } from "./model.ts";
import { loraMethod } from "./model.ts";
import type { LoraOptions } from "./config.ts";

const tiny = useTinyLlamaAndGpt2();

function inject(model: CausalLM, options: LoraOptions = {}, seed = 3): LoraAdapter {
  return injectForTest<LoraAdapter>(loraMethod, model, options, { seed });
}


/** With a fresh adapter on `model`, runs `body`, then removes the adapter whatever happens. */
function withAdapter<T>(model: CausalLM, options: LoraOptions, body: (adapter: LoraAdapter) => T): T {
  return usingAdapter(inject(model, options), body);
}

describe("LoRA injection", () => {
  it("targets q_proj and v_proj of every Llama layer by default, with A [r, in] and B [out, r] in PEFT's names", () => {
    withAdapter(tiny.llama, { r: 4 }, (adapter) => {
      const tensors = adapter.exportTensors();
      expect([...tensors.keys()]).toEqual([
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight",
        "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
      ]);
      expect(tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!.shape).toEqual([4, 32]);
      expect(tensors.get("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")!.shape).toEqual([16, 4]);
      expect(adapter.trainableParameterCount()).toBe(2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4));
    });
  });

  it("initialises A from U(-1/sqrt(in), 1/sqrt(in)) with the seed, and B at zero", () => {
    const first = withAdapter(tiny.llama, {}, (adapter) => adapter.exportTensors());
    const again = withAdapter(tiny.llama, {}, (adapter) => adapter.exportTensors());
    const a = first.get("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")!.data;
    expect(Math.max(...a.map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(32));
    expect(Math.max(...a.map(Math.abs))).toBeGreaterThan(0.8 / Math.sqrt(32));
    expect(again.get("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")!.data).toEqual(a);
    expect(first.get("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight")!.data.every((v) => v === 0)).toBe(true);
  });

  it('targets every linear module but the output head with "all-linear"', () => {
    withAdapter(tiny.llama, { targetModules: "all-linear" }, (adapter) => {
      expect([...adapter.layers.keys()]).toEqual([...tiny.llama.linears.keys()].filter((path) => path !== "lm_head"));
      expect(adapter.adapterConfig().target_modules).toEqual(["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]);
    });
  });

  it("exports only names that are base_model.model. + a real module path + .lora_A/B.weight", () => {
    for (const [model, options] of [[tiny.llama, { targetModules: "all-linear" }], [tiny.gpt2, { targetModules: ["c_attn", "c_fc"] }]] as const) {
      withAdapter(model, options, (adapter) => {
        const bytes = writeSafetensors(adapter.exportTensors());
        const { tensors } = readSafetensors(bytes, "adapter_model.safetensors");
        for (const [name, tensor] of tensors) {
          const match = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(name);
          expect(match, name).not.toBeNull();
          const module = model.linears.get(match![1]!);
          expect(module, name).toBeDefined();
          const r = adapter.config.r;
          expect(tensor.shape).toEqual(match![2] === "A" ? [r, module!.inFeatures] : [module!.outFeatures, r]);
        }
        expect(tensors.size).toBe(2 * adapter.layers.size);
      });
    }
  });

  it("writes adapter_config.json with every key PEFT.md lists", () => {
    withAdapter(tiny.llama, { r: 4, alpha: 16, dropout: 0.05, rsLora: true }, (adapter) => {
      const config = adapter.adapterConfig();
      expect(config).toMatchObject({
        peft_type: "LORA",
        task_type: "CAUSAL_LM",
        base_model_name_or_path: "s3://models/tiny",
        r: 4,
        lora_alpha: 16,
        lora_dropout: 0.05,
        target_modules: ["q_proj", "v_proj"],
        bias: "none",
        fan_in_fan_out: false,
        use_rslora: true,
        use_dora: false,
        modules_to_save: null,
        inference_mode: true,
        init_lora_weights: true,
        layers_to_transform: null,
        rank_pattern: {},
        alpha_pattern: {},
        revision: null,
      });
      expect(Object.keys(config)).toEqual(Object.keys(config).sort());
    });
    withAdapter(tiny.gpt2, {}, (adapter) => {
      expect(adapter.adapterConfig()).toMatchObject({ target_modules: ["c_attn"], fan_in_fan_out: true });
    });
  });

  it("rejects targets that match nothing, a tied output head, and invalid options", () => {
    expect(() => inject(tiny.llama, { targetModules: ["q_prj"] })).toThrow(
      'spec.method.targetModules: "q_prj" matches no linear module of LlamaForCausalLM; its linear modules are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head',
    );
    expect(() => inject(tiny.gpt2, { targetModules: ["lm_head"] })).toThrow(/"lm_head" shares its weight with the input embeddings/);
    expect(() => inject(tiny.llama, { r: 0 })).toThrow("spec.method.r: must be a positive integer, got 0");
    expect(() => inject(tiny.llama, { dropout: 1 })).toThrow("spec.method.dropout: must be a number in [0, 1), got 1");
    expect(() => inject(tiny.llama, { targetModules: [] })).toThrow(/^spec\.method\.targetModules: must be "all-linear" or a non-empty list/);
    for (const module of tiny.llama.linears.values()) expect(module.wrapper).toBeUndefined();
  });

  it("refuses a second adapter on the same modules", () => {
    withAdapter(tiny.llama, {}, () => {
      expect(() => inject(tiny.llama, { targetModules: ["q_proj"] })).toThrow(/already has an adapter/);
    });
  });

  it("is found in the registry by its method type", () => {
    expect(getMethod("lora")).toBe(loraMethod);
    expect(methodTypes()).toContain("lora");
    expect(() => getMethod("lorax")).toThrow('method type "lorax" is not implemented; known: lora');
  });
});

describe("LoRA numerics", () => {
  it("gives exactly the base model's logits at initialisation, and again after removal", () => {
    const base = logitsOf(tiny.llama, IDS, MASK);
    withAdapter(tiny.llama, { targetModules: "all-linear", r: 4, alpha: 32 }, (adapter) => {
      expect(logitsOf(tiny.llama, IDS, MASK)).toEqual(base);
      randomizeLoraB(adapter);
      expect(logitsOf(tiny.llama, IDS, MASK)).not.toEqual(base);
      expect(logitsOf(tiny.llama, IDS, MASK, { disableAdapters: true })).toEqual(base);
    });
    expect(logitsOf(tiny.llama, IDS, MASK)).toEqual(base);
  });

  for (const [name, getModel, options] of [
    ["Llama, all-linear, rsLoRA", () => tiny.llama, { targetModules: "all-linear", r: 4, alpha: 8, rsLora: true }],
    ["GPT-2 Conv1D modules", () => tiny.gpt2, { targetModules: ["c_attn", "c_proj", "c_fc"], r: 2, alpha: 5 }],
  ] as const) {
    it(`merged weights give the adapter's logits within 1e-5 (${name})`, () => {
      const model = getModel();
      withAdapter(model, options, (adapter) => {
        randomizeLoraB(adapter);
        const adapted = logitsOf(model, IDS, MASK);
        const merged = createModelFromStateDict(model.config, adapter.merge());
        try {
          const base = logitsOf(model, IDS, MASK, { disableAdapters: true });
          expect(relativeError(adapted, base)).toBeGreaterThan(1e-2);
          expect(relativeError(logitsOf(merged, IDS, MASK), adapted)).toBeLessThan(1e-5);
        } finally {
          merged.dispose();
        }
      });
    });
  }

  it("saves and restores its state exactly", () => {
    withAdapter(tiny.llama, {}, (adapter) => {
      randomizeLoraB(adapter);
      const saved = adapter.saveState();
      const logits = logitsOf(tiny.llama, IDS, MASK);
      randomizeLoraB(adapter, 99);
      adapter.loadState(saved);
      expect(logitsOf(tiny.llama, IDS, MASK)).toEqual(logits);
      const wrongShape: TensorMap = new Map(saved);
      wrongShape.set("model.layers.0.self_attn.q_proj.lora_A", { shape: [2, 2], data: new Float32Array(4) });
      expect(() => adapter.loadState(wrongShape)).toThrow('LoRA state: tensor "model.layers.0.self_attn.q_proj.lora_A" has shape [2, 2], expected [32, 8]');
    });
  });

  it("applies seeded inverted dropout in training only", () => {
    const run = (training: boolean) =>
      withAdapter(tiny.llama, { dropout: 0.5 }, (adapter) => {
        randomizeLoraB(adapter);
        return logitsOf(tiny.llama, IDS, MASK, { training });
      });
    const evaluation = withAdapter(tiny.llama, { dropout: 0 }, (adapter) => {
      randomizeLoraB(adapter);
      return logitsOf(tiny.llama, IDS, MASK);
    });
    expect(run(false)).toEqual(evaluation);
    expect(run(true)).toEqual(run(true));
    expect(relativeError(run(true), evaluation)).toBeGreaterThan(1e-3);
  });
});

/**
 * dL/dA and dL/dB from tfjs (float32, through the explicit-transpose linear) against central
 * finite differences of the float64 reference model with merged weights W + s·B·A.
 */
describe("LoRA gradients match finite differences of the float64 reference", () => {
  for (const family of ["llama", "gpt2"] as const) {
    it(family, () => {
      const model = family === "llama" ? tiny.llama : tiny.gpt2;
      const folder = family === "llama" ? tiny.llamaFolder : tiny.gpt2Folder;
      const reference = family === "llama" ? referenceLlamaLogits : referenceGpt2Logits;
      const options: LoraOptions = family === "llama" ? { targetModules: ["q_proj", "v_proj", "down_proj"], r: 2, alpha: 6 } : { targetModules: ["c_attn", "c_fc"], r: 2, alpha: 6 };
      withAdapter(model, options, (adapter) => {
        randomizeLoraB(adapter);
        const vocab = model.config.vocabSize;
        const coefficients = Rng.fromSeed(21).fillUniform(new Float32Array(IDS.length * IDS[0]!.length * vocab), -1, 1);

        // tfjs gradients of L = sum(logits * coefficients).
        const variables = adapter.trainableVariables();
        const { value, grads } = tf.variableGrads(() =>
          tf.tidy(() => {
            const logits = model.forward({
              inputIds: tf.tensor2d(IDS.flat(), [2, 6], "int32"),
              attentionMask: tf.tensor2d(MASK.flat(), [2, 6], "int32"),
            });
            return tf.sum(tf.mul(logits, tf.tensor(coefficients, logits.shape)));
          }) as tf.Scalar,
          [...variables.values()],
        );

        // The same loss in float64, from PEFT-layout A and B merged into the base weights.
        const peft = adapter.exportTensors();
        const scale = adapter.layers.values().next().value!.scale;
        const loss = (tensors: Map<string, { shape: number[]; data: Float64Array }>) => {
          const weights = new Map<string, { shape: readonly number[]; data: ArrayLike<number> }>(folder.weights);
          for (const [path, layer] of adapter.layers) {
            const a = tensors.get(`base_model.model.${path}.lora_A.weight`)!.data;
            const b = tensors.get(`base_model.model.${path}.lora_B.weight`)!.data;
            const base = folder.weights.get(`${path}.weight`)!.data;
            const [inFeatures, outFeatures, r] = [layer.module.inFeatures, layer.module.outFeatures, layer.r];
            const merged = Float64Array.from(base);
            for (let o = 0; o < outFeatures; o++) {
              for (let i = 0; i < inFeatures; i++) {
                let update = 0;
                for (let k = 0; k < r; k++) update += b[o * r + k]! * a[k * inFeatures + i]!;
                // nn.Linear stores [out, in]; Conv1D stores [in, out].
                const index = layer.module.weightLayout === "linear" ? o * inFeatures + i : i * outFeatures + o;
                merged[index] = merged[index]! + scale * update;
              }
            }
            weights.set(`${path}.weight`, { shape: folder.weights.get(`${path}.weight`)!.shape, data: merged });
          }
          const logits = reference(folder.config, weights as ReferenceWeights, { ids: IDS, mask: MASK }).flat(2);
          return logits.reduce((sum, v, i) => sum + v * coefficients[i]!, 0);
        };
        const float64 = new Map([...peft].map(([name, t]) => [name, { shape: t.shape, data: Float64Array.from(t.data) }]));
        expect(Math.abs(loss(float64) - value.dataSync()[0]!) / Math.abs(loss(float64))).toBeLessThan(1e-5);

        // Every 5th parameter of each tensor keeps the check quick; tfjs stores A and B transposed.
        const epsilon = 1e-5;
        const analytic: number[] = [];
        const numeric: number[] = [];
        for (const [path, layer] of adapter.layers) {
          for (const [which, variable] of [["A", layer.a], ["B", layer.b]] as const) {
            const gradient = grads[variable.name]!.dataSync();
            const entry = float64.get(`base_model.model.${path}.lora_${which}.weight`)!;
            const [rows, cols] = entry.shape as [number, number];
            for (let index = 0; index < rows * cols; index += 5) {
              const original = entry.data[index]!;
              entry.data[index] = original + epsilon;
              const plus = loss(float64);
              entry.data[index] = original - epsilon;
              const minus = loss(float64);
              entry.data[index] = original;
              numeric.push((plus - minus) / (2 * epsilon));
              const [row, col] = [Math.floor(index / cols), index % cols];
              analytic.push(gradient[col * rows + row]!);
            }
          }
        }
        expect(Math.max(...numeric.map(Math.abs))).toBeGreaterThan(1e-2);
        expect(relativeError(analytic, numeric)).toBeLessThan(1e-5);
        tf.dispose([value, ...Object.values(grads)]);
      });
    });
  }
});
