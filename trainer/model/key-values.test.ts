import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { huggingFacePython } from "../methods/prompt/testing.ts";
import { logitsOf, sampleIds } from "../testing/compare.ts";
import { TestFolderStore } from "../testing/folder-store.ts";
import { TINY_GEMMA3, TINY_GPT2, TINY_LLAMA, TINY_PHI3, TINY_QWEN3, writeTinyModel } from "../testing/tiny-models.ts";
import { loadModel } from "./loader.ts";
import type { CausalLM, KeyValuePrefix } from "./model.ts";

/**
 * CausalLM.keyValues hands over what each layer's attention attends over. Checked through the
 * identity Hugging Face's past_key_values obey: the logits of [lead + input] at the input's
 * positions equal the logits of [input] with the lead's keys and values as the prefix. Any
 * difference in how the keys were made (norm, rotary base, partial rotary, LongRoPE factor,
 * fused projections, sliding window) breaks it.
 */

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../tests/fixtures/hf/models");
const MAX_DIFFERENCE = 1e-5;

/** Long enough for the lead to reach past Gemma 3's and Phi-3's sliding windows (4 and 5). */
const LEAD_LENGTH = 6;
const INPUT_LENGTH = 5;
/** Right padding in the second row. */
const MASK = [
  [1, 1, 1, 1, 1],
  [1, 1, 1, 0, 0],
];

const TINY = { llama: TINY_LLAMA, qwen3: TINY_QWEN3, gemma3: TINY_GEMMA3, phi3: TINY_PHI3, gpt2: TINY_GPT2 };
/** LongRoPE picks its factors by the pass's length, so these keep lead alone and lead + input on one side of original_max_position_embeddings. */
const LEAD_LENGTHS: Record<string, number> = { "phi3-longrope": 5, "phi3-longrope-short": 4 };
const fixtureNames = readdirSync(FIXTURES, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name)
  .sort();

const folders: string[] = [];

beforeAll(async () => {
  await selectBackend("cpu");
});

afterAll(async () => {
  for (const dir of folders) await rm(dir, { recursive: true, force: true });
});

function maxDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

function keyValuesOf(model: CausalLM, ids: number[][], prefix?: KeyValuePrefix[]): KeyValuePrefix[] {
  const inputIds = tf.tensor2d(ids.flat(), [ids.length, ids[0]!.length], "int32");
  try {
    return model.keyValues({ inputIds, pastKeyValuesPrefix: prefix });
  } finally {
    inputIds.dispose();
  }
}

function dispose(layers: KeyValuePrefix[]): void {
  for (const { key, value } of layers) tf.dispose([key, value]);
}

/** [lead + input] at the input's positions against [input] after keyValues(lead), and the chained keyValues against keyValues of the whole. */
function checkIdentity(model: CausalLM, leadLength: number): void {
  const vocab = model.config.vocabSize;
  const lead = sampleIds(1, leadLength, vocab, 7)[0]!;
  const input = sampleIds(2, INPUT_LENGTH, vocab, 3);
  const tensorsBefore = tf.memory().numTensors;
  const prefix = keyValuesOf(model, [lead]);
  try {
    const kvHeads = model.config.family === "llama" ? model.config.numKeyValueHeads : model.config.numHeads;
    const headDim = model.config.family === "llama" ? model.config.headDim : model.config.hiddenSize / model.config.numHeads;
    expect(prefix).toHaveLength(model.config.numLayers);
    for (const { key, value } of prefix) {
      expect(key.shape).toEqual([1, kvHeads, leadLength, headDim]);
      expect(value.shape).toEqual([1, kvHeads, leadLength, headDim]);
    }

    const whole = tf.tidy(() => {
      const logits = tf.tensor(logitsOf(model, input.map((row) => [...lead, ...row]), MASK.map((row) => [...lead.map(() => 1), ...row])), [2, leadLength + INPUT_LENGTH, vocab]);
      return tf.slice(logits, [0, leadLength, 0], [-1, -1, -1]).dataSync();
    });
    const withPrefix = logitsOf(model, input, MASK, { pastKeyValuesPrefix: prefix });
    expect(maxDifference(withPrefix, whole)).toBeLessThan(MAX_DIFFERENCE);
    // The prefix matters: without it the logits are far from these.
    expect(maxDifference(logitsOf(model, input, MASK), whole)).toBeGreaterThan(1e-2);

    // Given a prefix, keyValues returns it followed by the input's own: what a growing cache holds.
    const chained = keyValuesOf(model, [[...lead, ...input[0]!.slice(0, 2)]]);
    const continued = keyValuesOf(model, [input[0]!.slice(0, 2)], prefix);
    try {
      for (let i = 0; i < chained.length; i++) {
        expect(maxDifference(continued[i]!.key.dataSync(), chained[i]!.key.dataSync())).toBeLessThan(MAX_DIFFERENCE);
        expect(maxDifference(continued[i]!.value.dataSync(), chained[i]!.value.dataSync())).toBeLessThan(MAX_DIFFERENCE);
      }
    } finally {
      dispose(chained);
      dispose(continued);
    }
  } finally {
    dispose(prefix);
  }
  expect(tf.memory().numTensors).toBe(tensorsBefore);
}

describe("keyValues: the keys and values the model's attention attends over", () => {
  it.each(Object.keys(TINY))("tiny %s: logits of [lead + input] equal those of [input] after the lead's keys and values", async (name) => {
    const folder = await writeTinyModel(TINY[name as keyof typeof TINY], { seed: 5 });
    folders.push(folder.dir);
    const model = await loadModel(folder.store);
    try {
      checkIdentity(model, LEAD_LENGTH);
    } finally {
      model.dispose();
    }
  });

  it.each(fixtureNames)("transformers' %s: logits of [lead + input] equal those of [input] after the lead's keys and values", async (name) => {
    const model = await loadModel(new TestFolderStore(path.join(FIXTURES, name)));
    try {
      checkIdentity(model, LEAD_LENGTHS[name] ?? LEAD_LENGTH);
    } finally {
      model.dispose();
    }
  });

  it("leaves nothing behind when the pass fails", async () => {
    const folder = await writeTinyModel(TINY_QWEN3, { seed: 5 });
    folders.push(folder.dir);
    const model = await loadModel(folder.store);
    try {
      const before = tf.memory().numTensors;
      // Layer 0 hands over its keys and values, then layer 1's prefix has the wrong head size.
      const wrongPrefix = [16, 8].map((headDim) => ({ key: tf.zeros([1, 2, 3, headDim]) as tf.Tensor4D, value: tf.zeros([1, 2, 3, headDim]) as tf.Tensor4D }));
      expect(() => keyValuesOf(model, [[1, 2, 3]], wrongPrefix)).toThrow();
      tf.dispose(wrongPrefix.flatMap(({ key, value }) => [key, value]));
      expect(tf.memory().numTensors).toBe(before);
      // And a later forward pass collects nothing.
      expect(logitsOf(model, [[1, 2, 3]])).toHaveLength(3 * 61);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      model.dispose();
    }
  });
});

/**
 * Transformers' own cache for the same ids: each layer's past_key_values, for every fixture in
 * one Python process. A sliding layer's cache keeps only its last window - 1 positions, so
 * those are compared.
 */
const HF_CACHES = `
import json, sys, torch
from transformers import AutoModelForCausalLM
out = {}
for name, folder, ids in json.loads(sys.argv[1]):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        cache = model(torch.tensor(ids), use_cache=True).past_key_values
    out[name] = [{"shape": list(layer.keys.shape), "key": layer.keys.flatten().tolist(), "value": layer.values.flatten().tolist()} for layer in cache.layers]
print(json.dumps(out))
`;

type CacheLayer = { shape: number[]; key: number[]; value: number[] };

const python = huggingFacePython();

describe.skipIf(!python)("keyValues against Transformers' past_key_values", () => {
  let caches: Record<string, CacheLayer[]>;
  const idsOf = (vocab: number) => sampleIds(1, LEAD_LENGTH, vocab, 7);

  beforeAll(async () => {
    const requests = [];
    for (const name of fixtureNames) {
      const dir = path.join(FIXTURES, name);
      const model = await loadModel(new TestFolderStore(dir));
      requests.push([name, dir, idsOf(model.config.vocabSize)]);
      model.dispose();
    }
    const output = execFileSync(python!, ["-c", HF_CACHES, JSON.stringify(requests)], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], maxBuffer: 64 << 20 });
    caches = JSON.parse(output) as Record<string, CacheLayer[]>;
  }, 300_000);

  it.each(fixtureNames)("%s", async (name) => {
    const model = await loadModel(new TestFolderStore(path.join(FIXTURES, name)));
    try {
      const reference = caches[name]!;
      const ours = keyValuesOf(model, idsOf(model.config.vocabSize));
      try {
        expect(ours).toHaveLength(reference.length);
        ours.forEach(({ key, value }, i) => {
          const kept = reference[i]!.shape[2]!;
          const last = (tensor: tf.Tensor4D) => tf.tidy(() => tf.slice(tensor, [0, 0, LEAD_LENGTH - kept, 0], [-1, -1, kept, -1]).dataSync());
          expect(maxDifference(last(key), reference[i]!.key)).toBeLessThan(MAX_DIFFERENCE);
          expect(maxDifference(last(value), reference[i]!.value)).toBeLessThan(MAX_DIFFERENCE);
        });
      } finally {
        dispose(ours);
      }
    } finally {
      model.dispose();
    }
  });
});
