import { rm } from "node:fs/promises";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import type { Adapter, InjectContext, PeftMethod } from "../methods/method.ts";
import { loadModel } from "../model/loader.ts";
import type { CausalLM } from "../model/model.ts";
import { Rng } from "../random.ts";
import { sampleIds } from "./compare.ts";
import { TINY_GPT2, TINY_LLAMA, writeTinyModel, type TinyModel } from "./tiny-models.ts";

/**
 * The setup every PEFT method's unit tests share: the tiny Llama and GPT-2 written to disk and
 * loaded on the CPU backend, a two-row input whose second row ends in padding, and an adapter
 * injected with a fixed seed and removed again whatever the test body does.
 */

/** Two rows of six token ids below 53 (the tiny models' vocabulary is larger). */
export const SAMPLE_IDS = sampleIds(2, 6, 53);
/** SAMPLE_IDS' attention mask: the second row ends in two padding positions. */
export const SAMPLE_MASK = [
  [1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 0, 0],
];

/** The tiny models a test file runs on, with the folders (config, float weights) they were loaded from. */
export interface TinyLlamaAndGpt2 {
  llama: CausalLM;
  gpt2: CausalLM;
  llamaFolder: TinyModel;
  gpt2Folder: TinyModel;
}

/**
 * Registers the file's beforeAll and afterAll: selects the CPU backend, writes the tiny Llama
 * (seed 11) and GPT-2 (seed 12) and loads them; afterwards disposes them and deletes their
 * folders. The returned object's fields are set once beforeAll has run, so read them inside
 * tests, not at the file's top level. `vocabSize` replaces both configs' vocabulary size (for a
 * test tokenizer's ids).
 */
export function useTinyLlamaAndGpt2(options: { vocabSize?: number } = {}): TinyLlamaAndGpt2 {
  const vocab = options.vocabSize === undefined ? {} : { vocab_size: options.vocabSize };
  const models = {} as TinyLlamaAndGpt2;
  beforeAll(async () => {
    await selectBackend("cpu");
    models.llamaFolder = await writeTinyModel({ ...TINY_LLAMA, ...vocab }, { seed: 11 });
    models.gpt2Folder = await writeTinyModel({ ...TINY_GPT2, ...vocab }, { seed: 12 });
    models.llama = await loadModel(models.llamaFolder.store);
    models.gpt2 = await loadModel(models.gpt2Folder.store);
  });
  afterAll(async () => {
    models.llama?.dispose();
    models.gpt2?.dispose();
    if (models.llamaFolder) await rm(models.llamaFolder.dir, { recursive: true, force: true });
    if (models.gpt2Folder) await rm(models.gpt2Folder.dir, { recursive: true, force: true });
  });
  return models;
}

/**
 * `method` injected into `model` as the tests do: its rng seeded with `seed` (default 3), a
 * placeholder base model path, and `context` on top.
 */
export function injectForTest<A extends Adapter>(method: PeftMethod, model: CausalLM, options: unknown, context: Partial<InjectContext> & { seed?: number } = {}): A {
  const { seed = 3, ...rest } = context;
  return method.inject(model, options, { rng: Rng.fromSeed(seed), baseModelNameOrPath: "s3://models/tiny", ...rest }) as A;
}

/**
 * Runs `body` with `adapter` injected and removes the adapter afterwards, also when `body`
 * throws; an async body's adapter is removed once its promise settles.
 */
export function usingAdapter<A extends Adapter, T>(adapter: A, body: (adapter: A) => T): T {
  let result: T;
  try {
    result = body(adapter);
  } catch (error) {
    adapter.remove();
    throw error;
  }
  if (result instanceof Promise) return result.finally(() => adapter.remove()) as T;
  adapter.remove();
  return result;
}

/**
 * Gives every LoRA B random values, uniform in [−0.5, 0.5) from `seed`, as training would: B
 * starts at zero, which makes the adapter a no-op and leaves A without a gradient.
 */
export function randomizeLoraB(adapter: Adapter, seed = 9): void {
  const rng = Rng.fromSeed(seed);
  const state = adapter.saveState();
  for (const [name, tensor] of state) {
    if (name.endsWith(".lora_B")) tensor.data = rng.fillUniform(new Float32Array(tensor.data.length), -0.5, 0.5);
  }
  adapter.loadState(state);
}

/** Token ids or a mask as an int32 [rows, columns] tensor. */
export function tensorIds(rows: number[][]): tf.Tensor2D {
  return tf.tensor2d(rows.flat(), [rows.length, rows[0]!.length], "int32");
}

/** max |a[i] − b[i]|: for comparisons with Hugging Face's logits in absolute terms. */
export function maxAbsDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`maxAbsDifference: ${a.length} values against ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}
