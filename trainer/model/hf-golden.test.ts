import { readdirSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { loraMethod, type LoraAdapter } from "../methods/lora/model.ts";
import { fromPeftTensors, mergeAdapter } from "../output/merge.ts";
import { Rng } from "../random.ts";
import { parseSafetensors, readSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { logitsOf } from "../testing/compare.ts";
import { TestFolderStore } from "../testing/folder-store.ts";
import { crossEntropySum, nextTokenTargets } from "../train/loss.ts";
import { SUPPORTED_ARCHITECTURES } from "./config.ts";
import { loadModel, loadModelConfig, weightShapes } from "./loader.ts";
import type { CausalLM } from "./model.ts";

/**
 * Hugging Face as the reference: tiny models that transformers built and saved, with the logits
 * and loss transformers computed and the LoRA adapters and logits PEFT computed
 * (scripts/hf/make-model-fixtures.py, committed under tests/fixtures/hf/models). The trainer
 * loads the same files with its own loader and must agree. No Python is needed here.
 */

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../tests/fixtures/hf/models");
/** The bound on logits; float32 against float32 measures a few 1e-6 here. */
const MAX_LOGIT_DIFFERENCE = 1e-4;
const MAX_LOSS_DIFFERENCE = 1e-5;

interface Expected {
  architecture: string;
  input_ids: number[][];
  attention_mask: number[][];
  labels: number[][];
  loss: number;
  lora_loss?: number;
}

interface Fixture {
  name: string;
  dir: string;
  expected: Expected;
  logits: TensorMap;
  adapter: { dir: string; config: Record<string, unknown>; tensors: TensorMap } | undefined;
}

const names = readdirSync(FIXTURES, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name)
  .sort();
const fixtures = new Map<string, Fixture>();
const temporary: string[] = [];

beforeAll(async () => {
  await selectBackend("cpu");
  for (const name of names) {
    const dir = path.join(FIXTURES, name);
    const expected = JSON.parse(await readFile(path.join(dir, "expected.json"), "utf8")) as Expected;
    const logits = readSafetensors(await readFile(path.join(dir, "logits.safetensors")), `${name}/logits.safetensors`).tensors;
    const adapterDir = path.join(dir, "adapter");
    const adapter = readdirSync(dir).includes("adapter")
      ? {
          dir: adapterDir,
          config: JSON.parse(await readFile(path.join(adapterDir, "adapter_config.json"), "utf8")) as Record<string, unknown>,
          tensors: readSafetensors(await readFile(path.join(adapterDir, "adapter_model.safetensors")), `${name}/adapter_model.safetensors`).tensors,
        }
      : undefined;
    fixtures.set(name, { name, dir, expected, logits, adapter });
  }
});

afterAll(async () => {
  for (const dir of temporary) await rm(dir, { recursive: true, force: true });
});

function maxDifference(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  expect(actual.length).toBe(expected.length);
  let max = 0;
  for (let i = 0; i < expected.length; i++) max = Math.max(max, Math.abs(actual[i]! - expected[i]!));
  return max;
}

/** The trainer's mean next-token loss, computed the way training computes it (chunked head, shifted labels). */
function trainerLoss(model: CausalLM, expected: Expected): number {
  const rows = expected.input_ids.length;
  const seq = expected.input_ids[0]!.length;
  const targets = nextTokenTargets(Int32Array.from(expected.labels.flat()), rows, seq);
  return tf.tidy(() => {
    const hidden = model.forward({
      inputIds: tf.tensor2d(expected.input_ids.flat(), [rows, seq], "int32"),
      attentionMask: tf.tensor2d(expected.attention_mask.flat(), [rows, seq], "int32"),
      skipOutputHead: true,
    });
    return crossEntropySum(hidden, model.outputHead, targets).dataSync()[0]! / targets.count;
  });
}

async function withModel<T>(dir: string, body: (model: CausalLM) => T | Promise<T>): Promise<T> {
  const model = await loadModel(new TestFolderStore(dir));
  try {
    return await body(model);
  } finally {
    model.dispose();
  }
}

/** A LoRA adapter with the options of a PEFT adapter_config.json; targets left to the trainer's defaults when `useDefaults`. */
function injectLike(model: CausalLM, config: Record<string, unknown>, useDefaults: boolean): LoraAdapter {
  const options = { r: config.r, alpha: config.lora_alpha, ...(useDefaults ? {} : { targetModules: config.target_modules }) };
  return loraMethod.inject(model, options, { rng: Rng.fromSeed(1), baseModelNameOrPath: String(config.base_model_name_or_path) }) as LoraAdapter;
}

describe("golden fixtures from transformers", () => {
  it("cover every architecture the trainer accepts", () => {
    const covered = new Set([...fixtures.values()].map((fixture) => fixture.expected.architecture));
    expect([...covered].sort()).toEqual(Object.keys(SUPPORTED_ARCHITECTURES).sort());
  });

  it.each(names)("%s: the trainer's weight list is exactly the tensors save_pretrained wrote, shapes included", async (name) => {
    const { dir } = fixtures.get(name)!;
    const store = new TestFolderStore(dir);
    const config = await loadModelConfig(store);
    const saved = parseSafetensors(await store.get("model.safetensors"), "model.safetensors").entries;
    const expected = [...weightShapes(config)].sort(([a], [b]) => a.localeCompare(b));
    expect(expected).toEqual([...saved].map(([key, entry]) => [key, entry.shape]).sort(([a], [b]) => String(a).localeCompare(String(b))));
  });

  it.each(names)("%s: logits and loss equal transformers'", async (name) => {
    const { dir, expected, logits } = fixtures.get(name)!;
    await withModel(dir, (model) => {
      expect(model.config.architecture).toBe(expected.architecture);
      const actual = logitsOf(model, expected.input_ids, expected.attention_mask);
      expect(maxDifference(actual, logits.get("logits")!.data)).toBeLessThan(MAX_LOGIT_DIFFERENCE);
      expect(Math.abs(trainerLoss(model, expected) - expected.loss)).toBeLessThan(MAX_LOSS_DIFFERENCE);
    });
  });
});

const adapterNames = names.filter((name) => readdirSync(path.join(FIXTURES, name)).includes("adapter"));

describe("golden LoRA adapters from PEFT", () => {
  it("exist for Llama, GPT-2 (Conv1D), Phi-3 (fused modules), Gemma 3 and Qwen3", () => {
    expect(adapterNames).toEqual(["gemma3-text", "gpt2", "llama-gqa", "phi3", "qwen3"]);
  });

  it.each(adapterNames)("%s: PEFT's adapter loaded into the trainer gives PEFT's logits and loss", async (name) => {
    const { dir, expected, logits, adapter } = fixtures.get(name)!;
    await withModel(dir, (model) => {
      const lora = injectLike(model, adapter!.config, false);
      try {
        lora.loadState(fromPeftTensors(adapter!.tensors));
        const actual = logitsOf(model, expected.input_ids, expected.attention_mask);
        expect(maxDifference(actual, logits.get("lora_logits")!.data)).toBeLessThan(MAX_LOGIT_DIFFERENCE);
        expect(Math.abs(trainerLoss(model, expected) - expected.lora_loss!)).toBeLessThan(MAX_LOSS_DIFFERENCE);
        // And back out: the trainer exports PEFT's own tensors, bit for bit.
        const exported = lora.exportTensors();
        expect([...exported.keys()].sort()).toEqual([...adapter!.tensors.keys()].sort());
        for (const [key, tensor] of adapter!.tensors) {
          expect(exported.get(key)!.shape).toEqual(tensor.shape);
          expect(Buffer.from(exported.get(key)!.data.buffer).equals(Buffer.from(tensor.data.buffer))).toBe(true);
        }
      } finally {
        lora.remove();
      }
    });
  });

  it.each(adapterNames)("%s: kubetune merge folds PEFT's adapter into a model folder that gives PEFT's logits", async (name) => {
    const { dir, expected, logits, adapter } = fixtures.get(name)!;
    const out = await mkdtemp(path.join(tmpdir(), `kubetune-golden-merge-${name}-`));
    temporary.push(out);
    await mergeAdapter({ adapter: new TestFolderStore(adapter!.dir), base: new TestFolderStore(dir), out: new TestFolderStore(out) });
    await withModel(out, (merged) => {
      const actual = logitsOf(merged, expected.input_ids, expected.attention_mask);
      expect(maxDifference(actual, logits.get("lora_logits")!.data)).toBeLessThan(MAX_LOGIT_DIFFERENCE);
    });
  });

  it.each(adapterNames)("%s: the trainer's own adapter for PEFT's settings has PEFT's tensor names, shapes and config", async (name) => {
    const { dir, adapter } = fixtures.get(name)!;
    const peftConfig = adapter!.config;
    // Where PEFT chose the targets by its defaults, the trainer must choose the same by its own.
    const targetsWereDefaults = !["qwen3", "phi3"].includes(name);
    await withModel(dir, (model) => {
      const lora = injectLike(model, peftConfig, targetsWereDefaults);
      try {
        const exported = lora.exportTensors();
        expect([...exported.keys()].sort()).toEqual([...adapter!.tensors.keys()].sort());
        for (const [key, tensor] of adapter!.tensors) expect(exported.get(key)!.shape).toEqual(tensor.shape);
        const ours = lora.adapterConfig();
        expect([...(ours.target_modules as string[])].sort()).toEqual([...(peftConfig.target_modules as string[])].sort());
        for (const key of ["fan_in_fan_out", "r", "lora_alpha", "peft_type", "task_type", "bias", "use_rslora", "use_dora"]) {
          expect([key, ours[key]]).toEqual([key, peftConfig[key]]);
        }
      } finally {
        lora.remove();
      }
    });
  });
});
