import { applySchemaDefaults } from "../schema/defaults.ts";
import { propertiesOf } from "../schema/schema.ts";
import {
  fineTuneJobSpecSchema,
  type DatasetFormat,
  type DefaultedFineTuneJobSpec,
  type FineTuneJobSpec,
} from "./finetunejob.ts";

/** The record fields each dataset format reads; each is named after itself unless dataset.fields says otherwise. */
export const FORMAT_FIELDS: Readonly<Record<DatasetFormat, readonly ("text" | "prompt" | "completion" | "input" | "messages" | "chosen" | "rejected" | "label")[]>> = {
  text: ["text"],
  instruction: ["prompt", "completion", "input"],
  chat: ["messages"],
  preference: ["prompt", "chosen", "rejected"],
  classification: ["text", "label"],
};

/**
 * The spec with every default filled in: the schema's (the ones the API server applies too)
 * and those that depend on other fields (the method's and objective's parameter blocks,
 * epochs, warmup, dataset field names, the checkpoint location). Method defaults that depend on
 * the model's architecture (LoRA's and IA3's target modules) are the trainer's: the API cannot know it.
 * Expects a spec that validate accepts; does not change its input.
 */
export function applyDefaults(spec: FineTuneJobSpec): DefaultedFineTuneJobSpec {
  const result = applySchemaDefaults(fineTuneJobSpecSchema, spec);
  const { method, objective, hyperparameters, dataset, checkpoint, output } = result;

  const methodProperties = propertiesOf(propertiesOf(fineTuneJobSpecSchema).method!);
  const block = methodProperties[method.type];
  // skTuning has a required description, so its block cannot be made up; validate refuses that spec.
  if (block && method[method.type] === undefined && method.type !== "skTuning") {
    Object.assign(method, { [method.type]: applySchemaDefaults(block, {}) });
  }

  if ((objective.type === "dpo" || objective.type === "rlaif") && !objective.dpo) {
    objective.dpo = applySchemaDefaults(propertiesOf(propertiesOf(fineTuneJobSpecSchema).objective!).dpo!, {}) as typeof objective.dpo;
  }
  if (hyperparameters.epochs === undefined && hyperparameters.maxSteps === undefined) hyperparameters.epochs = 1;
  if (hyperparameters.warmupSteps === undefined && hyperparameters.warmupRatio === undefined) hyperparameters.warmupSteps = 0;

  const fields = { ...dataset.fields };
  // RLAIF reads its prompts file as text records whose prompt is in field "prompt".
  for (const field of FORMAT_FIELDS[dataset.format]) fields[field] ??= objective.type === "rlaif" && field === "text" ? "prompt" : field;
  dataset.fields = fields;

  checkpoint.uri ??= `${output.uri.replace(/\/+$/, "")}/checkpoints`;
  return result;
}
