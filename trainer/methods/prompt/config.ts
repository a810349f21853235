import { MethodOptionsError } from "../method.ts";
import { checkVirtualTokens, optionsObject } from "./virtual-tokens.ts";

/** Prompt tuning's options as a FineTuneJob gives them (spec.method.prompt); every field is optional. */
export interface PromptOptions {
  /** Trainable embeddings prepended to every input. */
  numVirtualTokens?: number;
  /** RANDOM (standard normal, as PEFT) or TEXT (the frozen embeddings of initText's tokens). */
  init?: "RANDOM" | "TEXT";
  /** Required with TEXT, refused otherwise. */
  initText?: string;
}

export interface PromptConfig {
  numVirtualTokens: number;
  init: "RANDOM" | "TEXT";
  initText: string | undefined;
}

/** PEFT's PromptTuningConfig defaults (num_virtual_tokens as the API's). */
export const PROMPT_DEFAULTS = { numVirtualTokens: 20, init: "RANDOM" } as const;

/** Validates options and fills in the defaults; errors name the field under `path`. */
export function resolvePromptConfig(options: unknown, path = "spec.method"): PromptConfig {
  const raw = optionsObject(options, path, "prompt tuning");
  const numVirtualTokens = checkVirtualTokens(raw.numVirtualTokens ?? PROMPT_DEFAULTS.numVirtualTokens, path);
  const init = raw.init ?? PROMPT_DEFAULTS.init;
  if (init !== "RANDOM" && init !== "TEXT") throw new MethodOptionsError(`${path}.init`, `must be RANDOM or TEXT, got ${JSON.stringify(raw.init)}`);
  const initText = raw.initText;
  if (init === "TEXT" && (typeof initText !== "string" || initText.trim() === "")) {
    throw new MethodOptionsError(`${path}.initText`, `is required when init is TEXT: the text whose token embeddings start the prompt, got ${JSON.stringify(initText)}`);
  }
  if (init !== "TEXT" && initText !== undefined) throw new MethodOptionsError(`${path}.initText`, "is only used when init is TEXT");
  return { numVirtualTokens, init, initText: initText as string | undefined };
}

/**
 * The token ids whose embeddings start a TEXT-initialised prompt, as PEFT's PromptEmbedding
 * picks them: the text's ids (with the special tokens the tokenizer adds), cut to `count`, or
 * repeated whole and then cut when shorter.
 */
export function initTokenIds(textIds: readonly number[], count: number, path = "spec.method"): number[] {
  if (textIds.length === 0) throw new MethodOptionsError(`${path}.initText`, "has no tokens");
  const ids: number[] = [];
  while (ids.length < count) ids.push(...textIds);
  return ids.slice(0, count);
}
