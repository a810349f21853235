import { StorageError, type ObjectStore } from "../../storage/object-store.ts";
import type { Manifest } from "../../storage/publish.ts";
import { selectBackend } from "../backend/backend.ts";
import { BOTTLENECK_PEFT_TYPE } from "../methods/adapter/model.ts";
import { doraMethod, stateFromPeftTensors } from "../methods/dora/model.ts";
import { ia3Method, ia3StateFromPeftTensors, type Ia3Adapter } from "../methods/ia3/model.ts";
import { loraMethod, type LoraAdapter } from "../methods/lora/model.ts";
import type { Adapter } from "../methods/method.ts";
import { loadModel } from "../model/loader.ts";
import { Rng } from "../random.ts";
import { readSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MERGED_FOLDER, mergedModelFiles, writeOutputs } from "./output.ts";

/**
 * `kubetune merge`: folds a PEFT LoRA, DoRA or IA3 adapter folder (adapter_config.json,
 * adapter_model.safetensors) into a base model folder and writes a whole model folder that
 * Transformers and vLLM load without PEFT: the same files and the same merge that a job with
 * output.mergeIntoBase writes under merged/.
 */

/** A folder that is not a mergeable adapter, or that does not fit the base model. */
export class MergeError extends Error {}

export interface MergeResult {
  manifest: Manifest;
  /** Linear modules the adapter changed. */
  modules: string[];
}

export interface MergeOptions {
  /** Largest weight shard in bytes (default 5 GB); a larger model is written as shards with an index, as save_pretrained does. */
  maxShardBytes?: number;
}

export async function mergeAdapter(stores: { adapter: ObjectStore; base: ObjectStore; out: ObjectStore }, options: MergeOptions = {}): Promise<MergeResult> {
  const config = await readConfig(stores.adapter);
  if (config.peft_type !== "LORA" && config.peft_type !== "IA3") {
    const why = config.peft_type === BOTTLENECK_PEFT_TYPE ? "a bottleneck adapter's nonlinearity cannot be folded into weights" : "kubetune merge folds LoRA, DoRA and IA3 adapters";
    throw new MergeError(`${stores.adapter.uri}/${ADAPTER_CONFIG_FILE}: a ${String(config.peft_type)} adapter; ${why}`);
  }
  const weightsFile = `${stores.adapter.uri}/${ADAPTER_WEIGHTS_FILE}`;
  const weights = readSafetensors(await read(stores.adapter, ADAPTER_WEIGHTS_FILE), weightsFile).tensors;
  await selectBackend("cpu");
  const model = await loadModel(stores.base);
  let adapter: (Adapter & { layers: ReadonlyMap<string, unknown> }) | undefined;
  try {
    const context = { rng: Rng.fromSeed(0), baseModelNameOrPath: stores.base.uri, optionsPath: ADAPTER_CONFIG_FILE };
    try {
      if (config.peft_type === "IA3") {
        adapter = ia3Method.inject(model, { targetModules: config.target_modules, feedforwardModules: config.feedforward_modules }, context) as Ia3Adapter;
        adapter.loadState(ia3StateFromPeftTensors(weights, weightsFile));
      } else {
        const loraOptions = { r: config.r, alpha: config.lora_alpha, targetModules: config.target_modules, rsLora: config.use_rslora ?? false };
        adapter = (config.use_dora === true ? doraMethod : loraMethod).inject(model, loraOptions, context) as LoraAdapter;
        adapter.loadState(config.use_dora === true ? stateFromPeftTensors(weights, weightsFile) : fromPeftTensors(weights));
      }
    } catch (error) {
      throw new MergeError(`${stores.adapter.uri} does not fit the base model ${stores.base.uri}: ${(error as Error).message}`);
    }
    const merged = await mergedModelFiles(adapter, stores.base, options);
    const files = Object.fromEntries(Object.entries(merged).map(([key, content]) => [key.slice(MERGED_FOLDER.length + 1), content]));
    const manifest = await writeOutputs(stores.out, files, { adapter: stores.adapter.uri, baseModel: stores.base.uri });
    return { manifest, modules: [...adapter.layers.keys()] };
  } finally {
    adapter?.remove();
    model.dispose();
  }
}

interface PeftLoraConfig {
  peft_type?: string;
  use_dora?: boolean;
  /** IA3's. */
  feedforward_modules?: string[];
  r?: number;
  lora_alpha?: number;
  target_modules?: string[] | string;
  use_rslora?: boolean;
}

async function readConfig(store: ObjectStore): Promise<PeftLoraConfig> {
  const text = (await read(store, ADAPTER_CONFIG_FILE)).toString("utf8");
  try {
    return JSON.parse(text) as PeftLoraConfig;
  } catch (error) {
    throw new MergeError(`${store.uri}/${ADAPTER_CONFIG_FILE}: not JSON (${(error as Error).message})`);
  }
}

async function read(store: ObjectStore, key: string): Promise<Buffer> {
  try {
    return await store.get(key);
  } catch (error) {
    if (error instanceof StorageError && error.code === "NotFound") {
      throw new MergeError(`${store.uri}/${key} not found: ADAPTER must be a PEFT adapter folder (adapter_config.json and adapter_model.safetensors), such as a job's output.uri`);
    }
    throw error;
  }
}

/**
 * PEFT's `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r] as the
 * adapter's own state: `<module>.lora_A` [in, r] and `<module>.lora_B` [r, out].
 */
export function fromPeftTensors(tensors: TensorMap): TensorMap {
  const state: TensorMap = new Map();
  for (const [name, tensor] of tensors) {
    const match = /^base_model\.model\.(.+)\.(lora_[AB])\.weight$/.exec(name);
    if (!match || tensor.shape.length !== 2) throw new Error(`unexpected tensor "${name}" in ${ADAPTER_WEIGHTS_FILE}`);
    const [rows, columns] = tensor.shape as [number, number];
    const transposed = new Float32Array(rows * columns);
    for (let row = 0; row < rows; row++) for (let column = 0; column < columns; column++) transposed[column * rows + row] = tensor.data[row * columns + column]!;
    state.set(`${match[1]}.${match[2]}`, { shape: [columns, rows], data: transposed });
  }
  return state;
}
