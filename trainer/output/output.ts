import { joinKey, StorageError, type ObjectStore } from "../../storage/object-store.ts";
import { MANIFEST_FILE, publish, type FileContent, type Manifest } from "../../storage/publish.ts";
import type { Adapter } from "../methods/method.ts";
import { lossPlotSvg } from "../report/loss-plot.ts";
import { writeSafetensors } from "../safetensors/safetensors.ts";
import type { TrainingMetrics } from "./metrics.ts";
import { shardedWeightFiles } from "./shards.ts";

/**
 * The output folder of a job, in Hugging Face PEFT's layout so that PEFT (and, for LoRA, vLLM)
 * loads it as it is:
 *   adapter_config.json, adapter_model.safetensors  the adapter (PEFT.md)
 *   training_metrics.json, loss.svg                 how training went
 *   config.json, model.safetensors, tokenizer files  instead of the adapter, for full fine-tuning
 *   merged/                                         with output.mergeIntoBase: a whole model folder
 *                                                   (config.json, model.safetensors or shards with
 *                                                   model.safetensors.index.json, tokenizer files)
 *   manifest.json                                   written last: the folder is complete once it exists
 */
export const ADAPTER_CONFIG_FILE = "adapter_config.json";
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";
export const METRICS_FILE = "training_metrics.json";
export const LOSS_PLOT_FILE = "loss.svg";
export const MERGED_FOLDER = "merged";

/** The files a model folder may hold besides its weights, copied into the merged model when present. */
const MODEL_SIDE_FILES = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "vocab.json",
  "merges.txt",
];

/** peft_type values that Hugging Face PEFT loads (the methods here that export PEFT's format). */
const PEFT_TYPES = ["LORA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING"];

/**
 * Servers that load the output as it is (status.outputs.loadableBy):
 * - PEFT loads every PEFT-format adapter (LoRA, DoRA, IA3, prefix and prompt tuning, SK-tuning);
 * - vLLM loads LoRA without DoRA or modules_to_save up to its default --max-lora-rank of 16
 *   (PEFT.md), and serves a whole model folder (full fine-tuning) as any model;
 * - Transformers loads a whole model folder: the merged model, or full fine-tuning's output;
 * - kubetune alone loads a bottleneck adapter (docs/adapters.md), which no server knows.
 */
export function loadableBy(adapterConfig: Record<string, unknown>, merged: boolean, wholeModel = false): string[] {
  if (wholeModel) return ["Transformers", "vLLM"];
  const servers: string[] = PEFT_TYPES.includes(String(adapterConfig.peft_type)) ? ["PEFT"] : ["kubetune"];
  const vllmLoads =
    adapterConfig.peft_type === "LORA" && adapterConfig.use_dora !== true && adapterConfig.modules_to_save == null && Number(adapterConfig.r) <= 16;
  if (vllmLoads) servers.push("vLLM");
  if (merged) servers.push("Transformers");
  return servers;
}

/**
 * adapter_config.json and adapter_model.safetensors, byte-identical for identical adapter
 * weights. Where the base model was read from (baseModel.uri as the spec writes it) goes into
 * the safetensors header's __metadata__ as base_model_uri: adapter_config.json holds the name
 * PEFT loads, and some PEFT versions refuse keys they do not know there.
 */
export function adapterFiles(adapter: Adapter, baseModelUri?: string): Record<string, Buffer | string> {
  return {
    [ADAPTER_CONFIG_FILE]: `${JSON.stringify(adapter.adapterConfig(), null, 2)}\n`,
    [ADAPTER_WEIGHTS_FILE]: writeSafetensors(adapter.exportTensors(), baseModelUri === undefined ? {} : { metadata: { base_model_uri: baseModelUri } }),
  };
}

/**
 * The base model as adapter_config.json's base_model_name_or_path names it, for PEFT's
 * AutoPeftModel to load: baseModel.name, else the folder's config.json `_name_or_path` (the
 * name Transformers saved it under), else `uri` itself (a local path loads on the same machine;
 * an s3:// URI does not, and baseModel.name should be set).
 */
export async function baseModelName(name: string | undefined, uri: string, model: ObjectStore): Promise<string> {
  if (name !== undefined) return name;
  // The model loader has read and checked config.json already.
  const saved = (JSON.parse((await model.get("config.json")).toString("utf8")) as { _name_or_path?: unknown })._name_or_path;
  return typeof saved === "string" && saved !== "" ? saved : uri;
}

/** training_metrics.json and the loss plot (train loss per step, eval loss as dots). */
export function reportFiles(metrics: TrainingMetrics, title: string): Record<string, string> {
  return {
    [METRICS_FILE]: `${JSON.stringify(metrics, null, 2)}\n`,
    [LOSS_PLOT_FILE]: lossPlotSvg(
      metrics.loss.map(({ step, loss }) => ({ step, loss })),
      metrics.eval.map(({ step, loss }) => ({ step, loss })),
      title,
    ),
  };
}

/**
 * The merged model under merged/: the base folder's config.json and tokenizer files as they
 * are, and the weights with the adapter folded in (float32) as save_pretrained writes them:
 * model.safetensors, or shards of at most maxShardBytes (default 5 GB) with
 * model.safetensors.index.json. The shards are streamed when written (trainer/output/shards.ts).
 */
export async function mergedModelFiles(
  adapter: Adapter,
  baseModel: ObjectStore,
  options: { maxShardBytes?: number; folder?: string } = {},
): Promise<Record<string, FileContent>> {
  // Full fine-tuning writes its model at the top of the output folder (folder "").
  const folder = options.folder ?? MERGED_FOLDER;
  const inFolder = (name: string) => (folder === "" ? name : joinKey(folder, name));
  const files: Record<string, FileContent> = {};
  for (const name of MODEL_SIDE_FILES) {
    try {
      files[inFolder(name)] = await baseModel.get(name);
    } catch (error) {
      if (!(error instanceof StorageError && error.code === "NotFound")) throw error;
    }
  }
  for (const [name, content] of Object.entries(shardedWeightFiles(adapter.merge(), options))) files[inFolder(name)] = content;
  return files;
}

/**
 * Writes every file, then the manifest: a reader that finds manifest.json finds a complete
 * output. An earlier run's manifest is removed first, so it never vouches for files half
 * replaced by this run.
 */
export async function writeOutputs(store: ObjectStore, files: Record<string, FileContent>, metadata: Record<string, unknown>): Promise<Manifest> {
  await store.delete([MANIFEST_FILE]);
  return publish(store, "", files, metadata);
}
