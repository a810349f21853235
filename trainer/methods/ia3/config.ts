import { MethodOptionsError } from "../method.ts";

/** IA3's options as a FineTuneJob gives them; every field is optional. */
export interface Ia3Options {
  /** Module names matched as path suffixes ("k_proj", "mlp.c_proj"). */
  targetModules?: readonly string[];
  /** Those targets whose input (not output) is rescaled. */
  feedforwardModules?: readonly string[];
}

export interface Ia3Config {
  targetModules: string[];
  feedforwardModules: string[];
}

/**
 * PEFT's IA3 defaults (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING and
 * ..._FEEDFORWARD_MODULES_MAPPING in peft/utils/constants.py), by Hugging Face architecture
 * class. Note that PEFT's defaults differ within the Llama family: Llama and Mistral rescale
 * k_proj, Qwen2, Qwen3 and Gemma 3 q_proj. PEFT has no entry for phi3 and asks for
 * target_modules; here Phi-3 gets its fused qkv_proj (as LoRA's default does) and down_proj.
 */
const IA3_DEFAULTS: Record<string, Ia3Config> = {
  LlamaForCausalLM: { targetModules: ["k_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"] },
  MistralForCausalLM: { targetModules: ["k_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"] },
  Qwen2ForCausalLM: { targetModules: ["q_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"] },
  Qwen3ForCausalLM: { targetModules: ["q_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"] },
  Gemma3ForCausalLM: { targetModules: ["q_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"] },
  Phi3ForCausalLM: { targetModules: ["qkv_proj", "down_proj"], feedforwardModules: ["down_proj"] },
  GPT2LMHeadModel: { targetModules: ["c_attn", "mlp.c_proj"], feedforwardModules: ["mlp.c_proj"] },
};

/** PEFT's IA3 targets and feed-forward modules for an architecture, or undefined where PEFT has none. */
export function ia3Defaults(architecture: string): Ia3Config | undefined {
  const defaults = IA3_DEFAULTS[architecture];
  return defaults && { targetModules: [...defaults.targetModules], feedforwardModules: [...defaults.feedforwardModules] };
}

/**
 * Validates options and fills in the defaults for the model's architecture; errors name the
 * field under `path`. As in PEFT, feed-forward modules left unset are the architecture's, and
 * they only matter for the targets they match.
 */
export function resolveIa3Config(options: unknown, model: { architecture: string }, path = "spec.method"): Ia3Config {
  const raw = options ?? {};
  if (typeof raw !== "object" || Array.isArray(raw)) throw new MethodOptionsError(path, "IA3 options must be an object");
  const { targetModules, feedforwardModules } = raw as Record<string, unknown>;
  const defaults = ia3Defaults(model.architecture);
  const names = (value: unknown, field: string): string[] | undefined => {
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || value.length === 0 || !value.every((name) => typeof name === "string" && name !== "")) {
      throw new MethodOptionsError(`${path}.${field}`, `must be a non-empty list of module names such as ["k_proj", "v_proj", "down_proj"], got ${JSON.stringify(value)}`);
    }
    return [...new Set(value as string[])];
  };
  const targets = names(targetModules, "targetModules") ?? defaults?.targetModules;
  if (!targets) {
    throw new MethodOptionsError(
      `${path}.targetModules`,
      `PEFT has no IA3 default for ${model.architecture}; name the modules to rescale (its attention key/value projections and its MLP's output projection)`,
    );
  }
  const feedforward = names(feedforwardModules, "feedforwardModules");
  if (feedforward) {
    const outside = feedforward.filter((name) => !targets.includes(name));
    if (outside.length > 0) {
      throw new MethodOptionsError(`${path}.feedforwardModules`, `${outside.map((name) => `"${name}"`).join(", ")} must also be in targetModules (PEFT requires a subset)`);
    }
  }
  return { targetModules: targets, feedforwardModules: feedforward ?? defaults?.feedforwardModules ?? [] };
}
