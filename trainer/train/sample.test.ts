import { rm } from "node:fs/promises";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { fullMethod } from "../methods/full/model.ts";
import { loraMethod } from "../methods/lora/model.ts";
import type { Adapter } from "../methods/method.ts";
import { prefixMethod } from "../methods/prefix/model.ts";
import { promptMethod } from "../methods/prompt/model.ts";
import { loadModel } from "../model/loader.ts";
import type { CausalLM } from "../model/model.ts";
import { Rng } from "../random.ts";
import { randomizeLoraB } from "../testing/method-tests.ts";
import { TINY_GPT2, TINY_LLAMA, writeTinyModel, type TinyModel } from "../testing/tiny-models.ts";
import { greedyDecode } from "./sample.ts";

/**
 * The run's before/after sample decodes on the key/value cache; these are the tokens the
 * earlier decoder gave, which re-ran the whole sequence through adapter.forward for each token.
 */
function previousGreedyDecode(adapter: Adapter, promptIds: readonly number[], options: { maxNewTokens: number; eosId?: number; maxLength: number; disableAdapters?: boolean }): number[] {
  const ids = [...promptIds];
  const generated: number[] = [];
  while (generated.length < options.maxNewTokens && ids.length < options.maxLength) {
    const next = tf.tidy(() => {
      const logits = adapter.forward({ inputIds: tf.tensor2d(ids, [1, ids.length], "int32"), disableAdapters: options.disableAdapters ?? false });
      const last = tf.slice(logits, [0, ids.length - 1, 0], [1, 1, -1]);
      return tf.argMax(tf.reshape(last, [-1])).dataSync()[0]!;
    });
    if (next === options.eosId) break;
    ids.push(next);
    generated.push(next);
  }
  return generated;
}

const folders: TinyModel[] = [];
const models: CausalLM[] = [];
beforeAll(async () => {
  await selectBackend("cpu");
  folders.push(await writeTinyModel(TINY_LLAMA, { seed: 11 }), await writeTinyModel(TINY_GPT2, { seed: 12 }));
  for (const folder of folders) models.push(await loadModel(folder.store));
});
afterAll(async () => {
  for (const model of models) model.dispose();
  for (const folder of folders) await rm(folder.dir, { recursive: true, force: true });
});

const METHODS: Array<{ name: string; inject: (model: CausalLM) => Adapter }> = [
  {
    name: "lora",
    inject: (model) => {
      const adapter = loraMethod.inject(model, { r: 4, alpha: 8, targetModules: model.config.family === "gpt2" ? ["c_attn", "c_fc"] : ["q_proj", "v_proj", "up_proj"] }, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" });
      randomizeLoraB(adapter);
      return adapter;
    },
  },
  { name: "prefix", inject: (model) => prefixMethod.inject(model, { numVirtualTokens: 4 }, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" }) },
  { name: "prompt", inject: (model) => promptMethod.inject(model, { numVirtualTokens: 3 }, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" }) },
  { name: "full", inject: (model) => fullMethod.inject(model, undefined, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" }) },
];

describe("the run's greedy sample", () => {
  it("gives the previous decoder's tokens on the key/value cache, for every kind of method, bounded by maxLength and EOS", () => {
    for (const [index, model] of models.entries()) {
      const family = index === 0 ? "llama" : "gpt2";
      const prompt = [7, 3, 19, 2, 11].map((id) => id % model.config.vocabSize);
      for (const method of METHODS) {
        const adapter = method.inject(model);
        try {
          for (const disableAdapters of [false, true]) {
            for (const options of [
              { maxNewTokens: 16, maxLength: 64, disableAdapters },
              { maxNewTokens: 16, maxLength: prompt.length + 4, disableAdapters },
            ]) {
              const expected = previousGreedyDecode(adapter, prompt, options);
              expect(greedyDecode(adapter, prompt, options), `${method.name} on ${family}`).toEqual(expected);
              // EOS: the first generated token that recurs later stops it there.
              const eosId = expected[2]!;
              expect(greedyDecode(adapter, prompt, { ...options, eosId }), `${method.name} on ${family}, EOS`).toEqual(previousGreedyDecode(adapter, prompt, { ...options, eosId }));
            }
          }
          expect(greedyDecode(adapter, prompt, { maxNewTokens: 4, maxLength: prompt.length })).toEqual([]);
        } finally {
          adapter.remove();
        }
      }
    }
  });
});
