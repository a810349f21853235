import { MethodOptionsError } from "../method.ts";

export const BOTTLENECK_VARIANTS = ["houlsby", "pfeiffer"] as const;
export const BOTTLENECK_ACTIVATIONS = ["relu", "gelu", "silu", "tanh"] as const;

/** The bottleneck adapter's options as a FineTuneJob gives them; every field is optional. */
export interface BottleneckOptions {
  /** houlsby: after the attention and after the MLP; pfeiffer: after the MLP only. */
  variant?: (typeof BOTTLENECK_VARIANTS)[number];
  /** Width k of the bottleneck. */
  bottleneckSize?: number;
  activation?: (typeof BOTTLENECK_ACTIVATIONS)[number];
}

export interface BottleneckConfig {
  variant: (typeof BOTTLENECK_VARIANTS)[number];
  bottleneckSize: number;
  activation: (typeof BOTTLENECK_ACTIVATIONS)[number];
}

/** The API's defaults (api/v1alpha1/finetunejob.ts), repeated for callers that skip applyDefaults. */
export const BOTTLENECK_DEFAULTS: BottleneckConfig = { variant: "houlsby", bottleneckSize: 64, activation: "relu" };

/** Validates options and fills in the defaults; errors name the field under `path`. */
export function resolveBottleneckConfig(options: unknown, path = "spec.method"): BottleneckConfig {
  const raw = options ?? {};
  if (typeof raw !== "object" || Array.isArray(raw)) throw new MethodOptionsError(path, "adapter options must be an object");
  const { variant, bottleneckSize, activation } = raw as Record<string, unknown>;
  const config = {
    variant: variant ?? BOTTLENECK_DEFAULTS.variant,
    bottleneckSize: bottleneckSize ?? BOTTLENECK_DEFAULTS.bottleneckSize,
    activation: activation ?? BOTTLENECK_DEFAULTS.activation,
  } as BottleneckConfig;
  if (!(BOTTLENECK_VARIANTS as readonly unknown[]).includes(config.variant)) {
    throw new MethodOptionsError(`${path}.variant`, `must be one of ${BOTTLENECK_VARIANTS.join(", ")}, got ${JSON.stringify(variant)}`);
  }
  if (!Number.isSafeInteger(config.bottleneckSize) || config.bottleneckSize <= 0) {
    throw new MethodOptionsError(`${path}.bottleneckSize`, `must be a positive integer, got ${JSON.stringify(bottleneckSize)}`);
  }
  if (!(BOTTLENECK_ACTIVATIONS as readonly unknown[]).includes(config.activation)) {
    throw new MethodOptionsError(`${path}.activation`, `must be one of ${BOTTLENECK_ACTIVATIONS.join(", ")}, got ${JSON.stringify(activation)}`);
  }
  return config;
}

/**
 * The sublayer output projections an adapter follows, as module-path suffixes: the attention's
 * output projection and the MLP's (Llama family: self_attn.o_proj and mlp.down_proj; GPT-2:
 * attn.c_proj and mlp.c_proj). An adapter on a module's output is an adapter on the sublayer's
 * output before the residual sum, where Houlsby et al. place it.
 */
export const ATTENTION_OUTPUTS = ["self_attn.o_proj", "attn.c_proj"] as const;
export const MLP_OUTPUTS = ["mlp.down_proj", "mlp.c_proj"] as const;

/** The suffixes a variant adapts. */
export function adaptedOutputs(variant: BottleneckConfig["variant"]): readonly string[] {
  return variant === "houlsby" ? [...ATTENTION_OUTPUTS, ...MLP_OUTPUTS] : MLP_OUTPUTS;
}
