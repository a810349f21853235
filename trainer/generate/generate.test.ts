import { rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { loraMethod } from "../methods/lora/model.ts";
import { prefixMethod } from "../methods/prefix/model.ts";
import { promptMethod } from "../methods/prompt/model.ts";
import type { Adapter } from "../methods/method.ts";
import { loadModel } from "../model/loader.ts";
import type { CausalLM } from "../model/model.ts";
import { Rng } from "../random.ts";
import { TestFolderStore } from "../testing/folder-store.ts";
import { TINY_GPT2, writeTinyModel } from "../testing/tiny-models.ts";
import { generate, generateUncached, pickToken, samplingDistribution } from "./generate.ts";

const QUICKSTART_MODEL = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../examples/quickstart/model");

let model: CausalLM;
let adapter: Adapter;

beforeAll(async () => {
  await selectBackend("cpu");
  model = await loadModel(new TestFolderStore(QUICKSTART_MODEL));
  adapter = loraMethod.inject(model, { r: 4, alpha: 8, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj"] }, { rng: Rng.fromSeed(3), baseModelNameOrPath: "quickstart" });
  // LoRA starts as the identity (B = 0); random B makes the adapted model differ from the base one.
  const rng = Rng.fromSeed(11);
  const state = adapter.saveState();
  for (const [name, tensor] of state) if (name.endsWith("lora_B")) state.set(name, { shape: tensor.shape, data: Float32Array.from(tensor.data, () => 0.3 * rng.normal()) });
  adapter.loadState(state);
});

afterAll(() => {
  adapter.remove();
  model.dispose();
});

const PROMPT = [5, 17, 42, 99, 7, 230, 12];

describe("generate with a key/value cache", () => {
  it("gives exactly the tokens of uncached greedy decoding, with and without the adapter", () => {
    for (const disableAdapters of [false, true]) {
      const options = { samples: 2, maxNewTokens: 24, temperature: 0, topP: 1, disableAdapters };
      const cached = generate(adapter, PROMPT, options);
      expect(cached).toEqual(generateUncached(adapter, PROMPT, options));
      expect(cached[0]).toHaveLength(24);
      // Greedy rows of one prompt are the same.
      expect(cached[1]).toEqual(cached[0]);
    }
    // The adapter changes the continuation: the cache is built with it on.
    expect(generate(adapter, PROMPT, { samples: 1, maxNewTokens: 24, temperature: 0, topP: 1 })).not.toEqual(
      generate(adapter, PROMPT, { samples: 1, maxNewTokens: 24, temperature: 0, topP: 1, disableAdapters: true }),
    );
  });

  it("samples the same tokens as the uncached reference from the same generator, and is reproducible", () => {
    const options = { samples: 4, maxNewTokens: 12, temperature: 1.3, topP: 0.9 };
    const cached = generate(adapter, PROMPT, { ...options, rng: Rng.fromSeed(5) });
    expect(cached).toEqual(generateUncached(adapter, PROMPT, { ...options, rng: Rng.fromSeed(5) }));
    expect(generate(adapter, PROMPT, { ...options, rng: Rng.fromSeed(5) })).toEqual(cached);
    // Rows draw differently.
    expect(new Set(cached.map((row) => row.join(","))).size).toBeGreaterThan(1);
  });

  it("stops a row at EOS, dropping it, and handles a one-token prompt", () => {
    const greedy = generate(adapter, PROMPT, { samples: 1, maxNewTokens: 10, temperature: 0, topP: 1 })[0]!;
    const eosId = greedy[3]!;
    const stopped = generate(adapter, PROMPT, { samples: 2, maxNewTokens: 10, temperature: 0, topP: 1, eosId })[0]!;
    expect(stopped).toEqual(greedy.slice(0, greedy.indexOf(eosId)));
    const single = { samples: 1, maxNewTokens: 8, temperature: 0, topP: 1 };
    expect(generate(adapter, [PROMPT[0]!], single)).toEqual(generateUncached(adapter, [PROMPT[0]!], single));
    expect(generate(adapter, PROMPT, { ...single, maxLength: PROMPT.length + 3 })[0]).toHaveLength(3);
  });

  it("leaves no tensor behind", () => {
    const before = tf.memory().numTensors;
    generate(adapter, PROMPT, { samples: 3, maxNewTokens: 6, temperature: 0.7, topP: 0.95, rng: Rng.fromSeed(1) });
    expect(tf.memory().numTensors).toBe(before);
  });

  it("refuses bad options with the option's name", () => {
    expect(() => generate(adapter, PROMPT, { samples: 1, maxNewTokens: 4, temperature: 1, topP: 1 })).toThrow(/needs a random generator/);
    expect(() => generate(adapter, PROMPT, { samples: 1, maxNewTokens: 4, temperature: 0, topP: 0 })).toThrow(/topP/);
    expect(() => generate(adapter, [], { samples: 1, maxNewTokens: 4, temperature: 0, topP: 1 })).toThrow(/no tokens/);
  });
});

describe("generate with virtual tokens (prompt and prefix tuning)", () => {
  // Each method's table gets random values: virtual tokens that change the continuation.
  const methods = [
    { name: "prefix", inject: (base: CausalLM) => prefixMethod.inject(base, { numVirtualTokens: 5 }, { rng: Rng.fromSeed(4), baseModelNameOrPath: "tiny" }) },
    { name: "prefix with projection", inject: (base: CausalLM) => prefixMethod.inject(base, { numVirtualTokens: 3, projection: true, projectionHiddenSize: 16 }, { rng: Rng.fromSeed(4), baseModelNameOrPath: "tiny" }) },
    { name: "prompt", inject: (base: CausalLM) => promptMethod.inject(base, { numVirtualTokens: 4 }, { rng: Rng.fromSeed(4), baseModelNameOrPath: "tiny" }) },
  ];

  async function onModels(body: (base: CausalLM, family: string) => void): Promise<void> {
    // The quickstart Llama (rotary positions) and a tiny GPT-2 (learned positions, which the virtual tokens take too).
    const gpt2Folder = await writeTinyModel(TINY_GPT2, { seed: 12 });
    const gpt2 = await loadModel(gpt2Folder.store);
    const llama = await loadModel(new TestFolderStore(QUICKSTART_MODEL));
    try {
      body(llama, "llama");
      body(gpt2, "gpt2");
    } finally {
      llama.dispose();
      gpt2.dispose();
      await rm(gpt2Folder.dir, { recursive: true, force: true });
    }
  }

  it("gives exactly the argmax tokens of the adapter's no-cache full forward pass", async () => {
    await onModels((base, family) => {
      const prompt = PROMPT.map((id) => id % base.config.vocabSize);
      for (const method of methods) {
        const virtual = method.inject(base);
        try {
          const before = tf.memory().numTensors;
          for (const ids of [prompt, prompt.slice(0, 1)]) {
            const options = { samples: 2, maxNewTokens: 12, temperature: 0, topP: 1 };
            const cached = generate(virtual, ids, options);
            expect(cached, `${method.name} on ${family}, ${ids.length} prompt tokens`).toEqual(generateUncached(virtual, ids, options));
            expect(cached[0]).toHaveLength(12);
            // The virtual tokens matter: without them (adapter disabled) the continuation differs.
            // (The projection's initial prefix, tanh of small values, may leave a tiny model's argmax alone.)
            if (!method.name.includes("projection")) expect(cached[0], `${method.name} on ${family}`).not.toEqual(generate(virtual, ids, { ...options, disableAdapters: true })[0]);
          }
          const sampling = { samples: 3, maxNewTokens: 8, temperature: 1.1, topP: 0.95 };
          expect(generate(virtual, prompt, { ...sampling, rng: Rng.fromSeed(8) })).toEqual(generateUncached(virtual, prompt, { ...sampling, rng: Rng.fromSeed(8) }));
          expect(tf.memory().numTensors).toBe(before);
        } finally {
          virtual.remove();
        }
      }
    });
  });
});

describe("sampling distribution", () => {
  const logits = [2.0, 1.0, 0.5, -1.0, 0.0];

  it("is softmax(logits / T) cut to the nucleus, as transformers' warpers", () => {
    const softmax = (t: number) => {
      const w = logits.map((z) => Math.exp(z / t));
      const s = w.reduce((a, b) => a + b, 0);
      return w.map((x) => x / s);
    };
    const full = samplingDistribution(logits, 0.8, 1);
    expect(full.tokens).toEqual([0, 1, 2, 4, 3]);
    full.tokens.forEach((token, i) => expect(full.probabilities[i]).toBeCloseTo(softmax(0.8)[token]!, 12));
    // p = softmax(T = 1): 0.574, 0.211, 0.128, 0.078, 0.029: 0.574 + 0.211 < 0.8 <= + 0.128.
    const p = softmax(1);
    const nucleus = samplingDistribution(logits, 1, 0.8);
    expect(nucleus.tokens).toEqual([0, 1, 2]);
    const kept = p[0]! + p[1]! + p[2]!;
    expect(nucleus.probabilities).toEqual([p[0]! / kept, p[1]! / kept, p[2]! / kept].map((x) => expect.closeTo(x, 12)));
    expect(samplingDistribution(logits, 1, 0.5).tokens).toEqual([0]);
  });

  it("draws tokens at those frequencies", () => {
    const rng = Rng.fromSeed(2024);
    const draws = 20000;
    const counts = new Array<number>(logits.length).fill(0);
    for (let i = 0; i < draws; i++) counts[pickToken(logits, { temperature: 1.5, topP: 0.9, rng })]! += 1;
    const { tokens, probabilities } = samplingDistribution(logits, 1.5, 0.9);
    for (let token = 0; token < logits.length; token++) {
      const index = tokens.indexOf(token);
      const expected = index < 0 ? 0 : probabilities[index]!;
      // Four standard deviations of a binomial share.
      const tolerance = 4 * Math.sqrt((expected * (1 - expected)) / draws) + 1e-9;
      expect(Math.abs(counts[token]! / draws - expected)).toBeLessThanOrEqual(tolerance);
    }
    expect(tokens).not.toContain(3);
    expect(counts[3]).toBe(0);
  });
});
