import * as tf from "@tensorflow/tfjs-core";
import { describe, expect, it } from "vitest";
import { loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { readSafetensors, writeSafetensors } from "../../safetensors/safetensors.ts";
import { logitsOf, relativeError } from "../../testing/compare.ts";
import { lossesOfTinyRun, resumedAndStraightOutputs } from "../../testing/method-training.ts";
import { checkGradients } from "../../testing/finite-differences.ts";
import { SAMPLE_IDS as IDS, SAMPLE_MASK as MASK, injectForTest, tensorIds, useTinyLlamaAndGpt2, usingAdapter } from "../../testing/method-tests.ts";
import { getMethod } from "../registry.ts";
import { BOTTLENECK_ACTIVATIONS, type BottleneckOptions } from "./config.ts";
import { bottleneckMethod, loadBottleneckAdapter, type BottleneckAdapter } from "./model.ts";

const tiny = useTinyLlamaAndGpt2();

/** With a bottleneck adapter (rng seed 3) on `model`, runs `body`, then removes the adapter. */
function withAdapter<T>(model: CausalLM, options: BottleneckOptions, body: (adapter: BottleneckAdapter) => T): T {
  return usingAdapter(injectForTest<BottleneckAdapter>(bottleneckMethod, model, options), body);
}

/** Gives W_up and the biases random values (they start at zero), as training would. */
function perturb(adapter: BottleneckAdapter, seed = 9): void {
  const rng = Rng.fromSeed(seed);
  const state = adapter.saveState();
  for (const [name, tensor] of state) if (!name.endsWith("adapter_down.weight")) tensor.data = rng.fillUniform(new Float32Array(tensor.data.length), -0.3, 0.3);
  adapter.loadState(state);
}

/** h + W_up act(W_down h + b_down) + b_up in float64, with the weights in nn.Linear's layout. */
function referenceAdapter(h: ArrayLike<number>, hidden: number, k: number, w: { down: ArrayLike<number>; downBias: ArrayLike<number>; up: ArrayLike<number>; upBias: ArrayLike<number> }, activation: string): number[] {
  const act = (x: number) => {
    if (activation === "relu") return Math.max(0, x);
    if (activation === "tanh") return Math.tanh(x);
    if (activation === "silu") return x / (1 + Math.exp(-x));
    return 0.5 * x * (1 + erf(x / Math.SQRT2));
  };
  const out: number[] = [];
  for (let row = 0; row < h.length / hidden; row++) {
    const z = Array.from({ length: k }, (_, j) => {
      let sum = w.downBias[j]!;
      for (let i = 0; i < hidden; i++) sum += w.down[j * hidden + i]! * h[row * hidden + i]!;
      return act(sum);
    });
    for (let i = 0; i < hidden; i++) {
      let sum = h[row * hidden + i]! + w.upBias[i]!;
      for (let j = 0; j < k; j++) sum += w.up[i * k + j]! * z[j]!;
      out.push(sum);
    }
  }
  return out;
}

/** erf to about 1e-13 (Abramowitz-Stegun's series for small x, continued fraction-free tail for large). */
function erf(x: number): number {
  if (Math.abs(x) > 4) return Math.sign(x);
  let sum = 0;
  let term = x;
  for (let n = 0; n < 80; n++) {
    sum += term / (2 * n + 1);
    term *= (-x * x) / (n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

describe("bottleneck adapters", () => {
  it("are the registry's adapter method, after attention and MLP (houlsby) or the MLP only (pfeiffer)", () => {
    expect(getMethod("adapter")).toBe(bottleneckMethod);
    withAdapter(tiny.llama, {}, (adapter) => {
      expect([...adapter.layers.keys()]).toEqual(["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"]);
      expect(adapter.trainableParameterCount()).toBe(4 * (32 * 64 + 64 + 64 * 32 + 32));
    });
    withAdapter(tiny.gpt2, { variant: "pfeiffer", bottleneckSize: 4 }, (adapter) => {
      expect([...adapter.layers.keys()]).toEqual(["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]);
      expect(adapter.adapterConfig()).toEqual({
        activation: "relu",
        base_model_name_or_path: "s3://models/tiny",
        bottleneck_size: 4,
        format: "kubetune-bottleneck-adapter/v1",
        inference_mode: true,
        peft_type: "BOTTLENECK_ADAPTER",
        target_modules: ["mlp.c_proj"],
        task_type: "CAUSAL_LM",
        variant: "pfeiffer",
      });
    });
  });

  it("start as the base model exactly (W_up and the biases start at zero)", () => {
    for (const model of [tiny.llama, tiny.gpt2]) {
      const base = logitsOf(model, IDS, MASK);
      withAdapter(model, { bottleneckSize: 8, activation: "tanh" }, (adapter) => {
        expect(logitsOf(model, IDS, MASK)).toEqual(base);
        perturb(adapter);
        expect(relativeError(logitsOf(model, IDS, MASK), base)).toBeGreaterThan(1e-2);
        expect(logitsOf(model, IDS, MASK, { disableAdapters: true })).toEqual(base);
      });
    }
  });

  it("refuse bad options, naming the field", () => {
    expect(() => bottleneckMethod.inject(tiny.llama, { bottleneckSize: 0 }, { rng: Rng.fromSeed(1), baseModelNameOrPath: "x" })).toThrow("spec.method.bottleneckSize: must be a positive integer, got 0");
    expect(() => bottleneckMethod.inject(tiny.llama, { activation: "swish" }, { rng: Rng.fromSeed(1), baseModelNameOrPath: "x" })).toThrow(
      'spec.method.activation: must be one of relu, gelu, silu, tanh, got "swish"',
    );
    withAdapter(tiny.llama, {}, (adapter) => expect(() => adapter.merge()).toThrow(/cannot be merged/));
  });

  for (const activation of BOTTLENECK_ACTIVATIONS) {
    it(`compute h + W_up ${activation}(W_down h) as a float64 reference does, with gradients matching its finite differences`, () => {
      withAdapter(tiny.gpt2, { bottleneckSize: 5, activation }, (adapter) => {
        perturb(adapter);
        const [path, layer] = [...adapter.layers][0]!;
        const inFeatures = layer.module.inFeatures;
        const x = Rng.fromSeed(4).fillUniform(new Float32Array(3 * inFeatures), -1, 1);
        const h = tf.tidy(() => layer.module.base(tf.tensor2d(x, [3, inFeatures])).dataSync());
        const weights = (values: ReadonlyMap<string, Float64Array>) => {
          const peft = adapter.exportTensors();
          const get = (name: string) => values.get(`${path}.${name}`) ?? peft.get(`base_model.model.${path}.${name}`)!.data;
          // The variables hold the weights transposed; the reference takes nn.Linear's layout.
          const transpose = (data: ArrayLike<number>, rows: number, columns: number) => Float64Array.from({ length: rows * columns }, (_, i) => data[(i % rows) * columns + Math.floor(i / rows)]!);
          return { down: transpose(get("adapter_down.weight"), 24, 5), downBias: get("adapter_down.bias"), up: transpose(get("adapter_up.weight"), 5, 24), upBias: get("adapter_up.bias") };
        };
        const actual = tf.tidy(() => layer.forward(tf.tensor2d(x, [3, inFeatures]), layer.module, { training: false, disableAdapters: false }).dataSync());
        const values = new Map([...adapter.trainableVariables()].filter(([name]) => name.startsWith(path)).map(([name, variable]) => [name, Float64Array.from(variable.dataSync())]));
        expect(relativeError(actual, referenceAdapter(h, 24, 5, weights(values), activation))).toBeLessThan(1e-6);

        const result = checkGradients({
          forward: () => layer.forward(tf.tensor2d(x, [3, inFeatures]), layer.module, { training: false, disableAdapters: false }),
          variables: new Map([...adapter.trainableVariables()].filter(([name]) => name.startsWith(path))),
          referenceLogits: (perturbed) => referenceAdapter(h, 24, 5, weights(perturbed), activation),
          stride: 1,
        });
        expect(Math.max(...result.numeric.map(Math.abs))).toBeGreaterThan(1e-2);
        expect(relativeError(result.analytic, result.numeric)).toBeLessThan(1e-4);
      });
    });
  }

  it("pass gradients through the whole model that match finite differences of its float32 logits", () => {
    withAdapter(tiny.llama, { bottleneckSize: 3, activation: "gelu" }, (adapter) => {
      perturb(adapter);
      const variables = adapter.trainableVariables();
      const forward = () => tiny.llama.forward({ inputIds: tensorIds(IDS), attentionMask: tensorIds(MASK) });
      const result = checkGradients({
        forward,
        variables,
        stride: 7,
        epsilon: 1e-2,
        referenceLogits: (values) => {
          const saved = adapter.saveState();
          adapter.loadState(new Map([...values].map(([name, data]) => [name, { shape: saved.get(name)!.shape, data: Float32Array.from(data) }])));
          const logits = tf.tidy(() => forward().dataSync());
          adapter.loadState(saved);
          return logits;
        },
      });
      expect(Math.max(...result.numeric.map(Math.abs))).toBeGreaterThan(1e-2);
      expect(relativeError(result.analytic, result.numeric)).toBeLessThan(2e-3);
    });
  });

  it("export nn.Linear-layout tensors that loadBottleneckAdapter puts back onto a fresh model, giving the same logits", async () => {
    const fresh = await loadModel(tiny.llamaFolder.store);
    try {
      withAdapter(tiny.llama, { variant: "houlsby", bottleneckSize: 6, activation: "silu" }, (adapter) => {
        perturb(adapter);
        const tensors = adapter.exportTensors();
        expect(tensors.get("base_model.model.model.layers.0.self_attn.o_proj.adapter_down.weight")!.shape).toEqual([6, 32]);
        expect(tensors.get("base_model.model.model.layers.0.self_attn.o_proj.adapter_up.weight")!.shape).toEqual([32, 6]);
        const file = writeSafetensors(tensors);
        const config = JSON.parse(JSON.stringify(adapter.adapterConfig())) as Record<string, unknown>;
        const loaded = loadBottleneckAdapter(fresh, config, readSafetensors(file, "adapter_model.safetensors").tensors, "out");
        try {
          expect(logitsOf(fresh, IDS, MASK)).toEqual(logitsOf(tiny.llama, IDS, MASK));
        } finally {
          loaded.remove();
        }
        expect(() => loadBottleneckAdapter(fresh, { ...config, peft_type: "LORA" }, new Map(), "out")).toThrow('out/adapter_config.json: peft_type is "LORA", not BOTTLENECK_ADAPTER');
        const missing = new Map(tensors);
        missing.delete("base_model.model.model.layers.1.mlp.down_proj.adapter_up.bias");
        expect(() => loadBottleneckAdapter(fresh, config, missing, "out")).toThrow('adapter state: missing tensor "model.layers.1.mlp.down_proj.adapter_up.bias"');
        for (const module of fresh.linears.values()) expect(module.wrapper).toBeUndefined();
      });
    } finally {
      fresh.dispose();
    }
  });
});

describe("adapter in the training loop", () => {
  it("lowers the loss on a learnable task", async () => {
    const { first, last } = await lossesOfTinyRun({ type: "adapter", adapter: { variant: "houlsby", bottleneckSize: 8, activation: "gelu" } }, { learningRate: 0.03, maxSteps: 40 });
    expect(last).toBeLessThan(first / 2);
  });

  it("resumes from a checkpoint to the same adapter, byte for byte", async () => {
    const { straight, resumed, resumedFrom } = await resumedAndStraightOutputs({ type: "adapter", adapter: { variant: "pfeiffer", bottleneckSize: 4 } }, ["adapter_model.safetensors"]);
    expect(resumedFrom).toBe(4);
    expect(resumed).toEqual(straight);
  });
});
