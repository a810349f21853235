import { StorageError, type ObjectStore } from "../../storage/object-store.ts";
import type { Manifest } from "../../storage/publish.ts";
import { selectBackend } from "../backend/backend.ts";
import { loraMethod, type LoraAdapter } from "../methods/lora/model.ts";
import { loadModel } from "../model/loader.ts";
import { Rng } from "../random.ts";
import { readSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MERGED_FOLDER, mergedModelFiles, writeOutputs } from "./output.ts";

/**
 * `kubetune merge`: folds a PEFT LoRA adapter folder (adapter_config.json,
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

export async function mergeAdapter(stores: { adapter: ObjectStore; base: ObjectStore; out: ObjectStore }): Promise<MergeResult> {
  const config = await readConfig(stores.adapter);
  if (config.peft_type !== "LORA" || config.use_dora === true) {
    const kind = config.use_dora === true ? "DoRA" : String(config.peft_type);
    throw new MergeError(`${stores.adapter.uri}/${ADAPTER_CONFIG_FILE}: a ${kind} adapter; kubetune merge folds LoRA adapters (peft_type LORA)`);
  }
  const weights = readSafetensors(await read(stores.adapter, ADAPTER_WEIGHTS_FILE), `${stores.adapter.uri}/${ADAPTER_WEIGHTS_FILE}`).tensors;
  await selectBackend("cpu");
  const model = await loadModel(stores.base);
  let adapter: LoraAdapter | undefined;
  try {
    const options = { r: config.r, alpha: config.lora_alpha, targetModules: config.target_modules, rsLora: config.use_rslora ?? false };
    try {
      adapter = loraMethod.inject(model, options, { rng: Rng.fromSeed(0), baseModelNameOrPath: stores.base.uri, optionsPath: ADAPTER_CONFIG_FILE }) as LoraAdapter;
      adapter.loadState(fromPeftTensors(weights));
    } catch (error) {
      throw new MergeError(`${stores.adapter.uri} does not fit the base model ${stores.base.uri}: ${(error as Error).message}`);
    }
    const merged = await mergedModelFiles(adapter, stores.base);
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
function fromPeftTensors(tensors: TensorMap): TensorMap {
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
