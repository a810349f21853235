import type { Architecture, ModelConfig } from "../../model/config.ts";
import { MethodOptionsError } from "../method.ts";

/** LoRA's options as a FineTuneJob gives them; every field is optional. */
export interface LoraOptions {
  /** Rank of the update B·A. */
  r?: number;
  /** Scale numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with rsLora). */
  alpha?: number;
  /** Dropout probability on the input of A, during training only. */
  dropout?: number;
  /** Module names matched as path suffixes ("q_proj"), or "all-linear" for every linear but the output head. */
  targetModules?: readonly string[] | "all-linear";
  /** Rank-stabilised scaling alpha / sqrt(r). */
  rsLora?: boolean;
}

export interface LoraConfig {
  r: number;
  alpha: number;
  dropout: number;
  targetModules: string[] | "all-linear";
  rsLora: boolean;
}

/** PEFT's LoraConfig defaults (PEFT.md). */
export const LORA_DEFAULTS = { r: 8, alpha: 8, dropout: 0, rsLora: false } as const;

/**
 * Default targets per architecture: PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
 * (by model_type: llama, mistral, qwen2, qwen3, gemma3_text, gpt2). PEFT has no entry for phi3
 * and asks for target_modules; here Phi-3 gets its fused qkv_proj, the counterpart of
 * q_proj + v_proj (and of GPT-2's c_attn), so a job without targetModules still trains.
 */
export const DEFAULT_TARGET_MODULES: Record<Architecture, string[]> = {
  LlamaForCausalLM: ["q_proj", "v_proj"],
  MistralForCausalLM: ["q_proj", "v_proj"],
  Qwen2ForCausalLM: ["q_proj", "v_proj"],
  Qwen3ForCausalLM: ["q_proj", "v_proj"],
  Gemma3ForCausalLM: ["q_proj", "v_proj"],
  Phi3ForCausalLM: ["qkv_proj"],
  GPT2LMHeadModel: ["c_attn"],
};

/** Validates options and fills in the defaults; errors name the field under `path`. */
export function resolveLoraConfig(options: unknown, model: Pick<ModelConfig, "architecture">, path = "spec.method"): LoraConfig {
  const raw = options ?? {};
  if (typeof raw !== "object" || Array.isArray(raw)) throw new MethodOptionsError(path, "LoRA options must be an object");
  const { r, alpha, dropout, targetModules, rsLora } = raw as Record<string, unknown>;
  const config: LoraConfig = {
    r: r ?? LORA_DEFAULTS.r,
    alpha: alpha ?? LORA_DEFAULTS.alpha,
    dropout: dropout ?? LORA_DEFAULTS.dropout,
    targetModules: targetModules ?? DEFAULT_TARGET_MODULES[model.architecture],
    rsLora: rsLora ?? LORA_DEFAULTS.rsLora,
  } as LoraConfig;
  if (!Number.isSafeInteger(config.r) || config.r <= 0) throw new MethodOptionsError(`${path}.r`, `must be a positive integer, got ${JSON.stringify(r)}`);
  if (typeof config.alpha !== "number" || !Number.isFinite(config.alpha) || config.alpha <= 0) {
    throw new MethodOptionsError(`${path}.alpha`, `must be a positive number, got ${JSON.stringify(alpha)}`);
  }
  if (typeof config.dropout !== "number" || !(config.dropout >= 0 && config.dropout < 1)) {
    throw new MethodOptionsError(`${path}.dropout`, `must be a number in [0, 1), got ${JSON.stringify(dropout)}`);
  }
  if (typeof config.rsLora !== "boolean") throw new MethodOptionsError(`${path}.rsLora`, `must be true or false, got ${JSON.stringify(rsLora)}`);
  const targets = config.targetModules;
  const validList = Array.isArray(targets) && targets.length > 0 && targets.every((t) => typeof t === "string" && t !== "");
  if (targets !== "all-linear" && !validList) {
    throw new MethodOptionsError(
      `${path}.targetModules`,
      `must be "all-linear" or a non-empty list of module names such as ["q_proj", "v_proj"], got ${JSON.stringify(targetModules)}`,
    );
  }
  if (Array.isArray(targets)) config.targetModules = [...new Set(targets)];
  return config;
}

/** The factor on B·A: alpha / r, or alpha / sqrt(r) with rsLora. */
export function loraScale(config: LoraConfig): number {
  return config.rsLora ? config.alpha / Math.sqrt(config.r) : config.alpha / config.r;
}
