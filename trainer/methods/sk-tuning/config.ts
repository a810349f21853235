import { MethodOptionsError } from "../method.ts";
import { checkBoolean, optionsObject } from "../prompt/virtual-tokens.ts";

/** SK-tuning's options as a FineTuneJob gives them (spec.method.skTuning). */
export interface SkTuningOptions {
  /** The task in words; its meaningful words become the virtual tokens. */
  description?: string;
  /** prefix: per-layer keys and values from the frozen model; prompt: input embeddings. Default prompt. */
  variant?: "prefix" | "prompt";
  /** Train a small linear map (identity at first) on the frozen semantic tokens instead of the tokens themselves. */
  projection?: boolean;
}

export interface SkTuningConfig {
  description: string;
  variant: "prefix" | "prompt";
  projection: boolean;
}

export const SK_TUNING_DEFAULTS = { variant: "prompt", projection: false } as const;

/** Validates options and fills in the defaults; errors name the field under `path`. */
export function resolveSkTuningConfig(options: unknown, path = "spec.method"): SkTuningConfig {
  const raw = optionsObject(options, path, "SK-tuning");
  const { description } = raw;
  if (typeof description !== "string" || description.trim() === "") {
    throw new MethodOptionsError(
      `${path}.description`,
      `is required: the task in words, e.g. "Classify the sentiment of this review as positive or negative", got ${JSON.stringify(description)}`,
    );
  }
  const variant = raw.variant ?? SK_TUNING_DEFAULTS.variant;
  if (variant !== "prefix" && variant !== "prompt") throw new MethodOptionsError(`${path}.variant`, `must be prefix or prompt, got ${JSON.stringify(raw.variant)}`);
  const projection = checkBoolean(raw.projection ?? SK_TUNING_DEFAULTS.projection, `${path}.projection`);
  return { description, variant, projection };
}
