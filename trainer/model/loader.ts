import * as tf from "@tensorflow/tfjs-core";
import { StorageError, type ObjectStore } from "../../storage/object-store.ts";
import { backendOwned } from "../backend/linear.ts";
import { entryToFloat32, parseSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { parseModelConfig, type ModelConfig } from "./config.ts";
import { Gpt2Model, gpt2WeightShapes } from "./gpt2.ts";
import { LlamaModel, llamaWeightShapes } from "./llama.ts";
import type { CausalLM } from "./model.ts";

/**
 * Loads a Hugging Face model folder (config.json plus model.safetensors, or shards listed in
 * model.safetensors.index.json) from an object store into a frozen tfjs model.
 */

const CONFIG_FILE = "config.json";
const SINGLE_FILE = "model.safetensors";
const INDEX_FILE = "model.safetensors.index.json";

/** A model folder that cannot be loaded; the message starts with the file to look at. */
export class ModelLoadError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "ModelLoadError";
  }
}

export interface LoadModelOptions {
  /** Overrides config.json's architecture (the FineTuneJob's baseModel.architecture). */
  architecture?: string;
}

/** Reads config.json, then every weight the architecture needs, checking names and shapes. */
export async function loadModel(store: ObjectStore, options: LoadModelOptions = {}): Promise<CausalLM> {
  const config = await loadModelConfig(store, options);
  return createModel(config, await loadWeights(store, config));
}

export async function loadModelConfig(store: ObjectStore, options: LoadModelOptions = {}): Promise<ModelConfig> {
  const json = await readJson(store, CONFIG_FILE);
  return parseModelConfig(json, { file: CONFIG_FILE, architectureOverride: options.architecture });
}

/** Every weight the model of `config` has, by Hugging Face name, with its shape. */
export function weightShapes(config: ModelConfig): Map<string, number[]> {
  return config.family === "gpt2" ? gpt2WeightShapes(config) : llamaWeightShapes(config);
}

/** Builds the model from float32 tensors by Hugging Face name; the model takes ownership of them. */
export function createModel(config: ModelConfig, weights: Map<string, tf.Tensor>): CausalLM {
  return config.family === "gpt2" ? new Gpt2Model(config, weights) : new LlamaModel(config, weights);
}

/** Builds the model from an in-memory state dict (e.g. merged weights), checking every name and shape. */
export function createModelFromStateDict(config: ModelConfig, stateDict: TensorMap, file = "state dict"): CausalLM {
  const weights = new Map<string, tf.Tensor>();
  for (const [name, shape] of weightShapes(config)) {
    const tensor = stateDict.get(name);
    if (!tensor) throw new ModelLoadError(file, `missing tensor "${name}" (expected shape [${shape.join(", ")}])`);
    checkShape(file, name, tensor.shape, shape);
    weights.set(name, tf.tensor(tensor.data, shape, "float32"));
  }
  return createModel(config, weights);
}

/**
 * Reads the weights one file at a time, each converted to tfjs before the next is read, so at
 * most one file's bytes are held in JavaScript memory at once.
 */
export async function loadWeights(store: ObjectStore, config: ModelConfig): Promise<Map<string, tf.Tensor>> {
  const expected = weightShapes(config);
  const aliases = (name: string) => (config.family === "gpt2" ? gpt2Aliases(name) : [name]);
  const plan = await planFiles(store, [...expected.keys()], aliases);
  const weights = new Map<string, tf.Tensor>();
  try {
    for (const [file, names] of plan) {
      const parsed = parseSafetensors(await getObject(store, file), file);
      for (const name of names) {
        const shape = expected.get(name)!;
        const stored = aliases(name).find((alias) => parsed.entries.has(alias));
        if (stored === undefined) {
          throw new ModelLoadError(file, `missing tensor "${name}" (expected shape [${shape.join(", ")}] from ${CONFIG_FILE})`);
        }
        const entry = parsed.entries.get(stored)!;
        checkShape(file, stored, entry.shape, shape);
        weights.set(name, backendOwned(tf.tensor(entryToFloat32(entry, stored, file), shape, "float32")));
      }
    }
  } catch (error) {
    for (const tensor of weights.values()) tensor.dispose();
    throw error;
  }
  return weights;
}

/** Which file holds each expected weight: all in model.safetensors, or as the index says. */
async function planFiles(store: ObjectStore, names: string[], aliases: (name: string) => string[]): Promise<Map<string, string[]>> {
  if (!(await store.head(INDEX_FILE))) {
    if (!(await store.head(SINGLE_FILE))) {
      const hint = (await store.head("pytorch_model.bin"))
        ? " It has pytorch_model.bin: convert the weights to safetensors first."
        : "";
      throw new ModelLoadError(store.uri, `no ${SINGLE_FILE} or ${INDEX_FILE} in the model folder.${hint}`);
    }
    return new Map([[SINGLE_FILE, names]]);
  }
  const index = await readJson(store, INDEX_FILE);
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new ModelLoadError(INDEX_FILE, `missing field "weight_map" (an object from tensor name to file)`);
  }
  const plan = new Map<string, string[]>();
  for (const name of names) {
    const file = aliases(name)
      .map((alias) => (weightMap as Record<string, unknown>)[alias])
      .find((value) => value !== undefined);
    if (typeof file !== "string") throw new ModelLoadError(INDEX_FILE, `weight_map has no file for tensor "${name}"`);
    if (file.includes("..") || file.startsWith("/")) throw new ModelLoadError(INDEX_FILE, `weight_map names an unsafe file "${file}" for "${name}"`);
    plan.set(file, [...(plan.get(file) ?? []), name]);
  }
  return new Map([...plan].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** GPT-2 files saved from GPT2Model (the original openai-community/gpt2) lack the "transformer." prefix. */
function gpt2Aliases(name: string): string[] {
  return name.startsWith("transformer.") ? [name, name.slice("transformer.".length)] : [name];
}

function checkShape(file: string, name: string, actual: readonly number[], expected: readonly number[]): void {
  if (actual.length !== expected.length || actual.some((dim, i) => dim !== expected[i])) {
    throw new ModelLoadError(file, `tensor "${name}" has shape [${actual.join(", ")}], but ${CONFIG_FILE} implies [${expected.join(", ")}]`);
  }
}

async function getObject(store: ObjectStore, key: string): Promise<Buffer> {
  try {
    return await store.get(key);
  } catch (error) {
    if (error instanceof StorageError && error.code === "NotFound") {
      throw new ModelLoadError(key, `not found in ${store.uri}`);
    }
    throw error;
  }
}

async function readJson(store: ObjectStore, key: string): Promise<unknown> {
  const bytes = await getObject(store, key);
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch (error) {
    throw new ModelLoadError(key, `not valid JSON (${(error as Error).message})`);
  }
}
