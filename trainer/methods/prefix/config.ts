import type { ModelConfig } from "../../model/config.ts";
import { MethodOptionsError } from "../method.ts";
import { checkBoolean, checkVirtualTokens, optionsObject } from "../prompt/virtual-tokens.ts";

/** Prefix tuning's options as a FineTuneJob gives them (spec.method.prefix); every field is optional. */
export interface PrefixOptions {
  /** Prefix positions per layer. */
  numVirtualTokens?: number;
  /** Reparameterise through an MLP while training (PEFT's prefix_projection). */
  projection?: boolean;
  /** Hidden width of that MLP (PEFT's encoder_hidden_size); token_dim when unset, as PEFT. */
  projectionHiddenSize?: number;
}

export interface PrefixConfig {
  numVirtualTokens: number;
  projection: boolean;
  /** Width of the MLP's hidden layer; only used with projection. */
  projectionHiddenSize: number;
}

/**
 * The shape of one layer's prefix. With grouped-query attention the prefix has one key and one
 * value per key/value head, as PEFT sizes it (token_dim = head_dim * num_key_value_heads).
 */
export interface PrefixGeometry {
  numLayers: number;
  keyValueHeads: number;
  headDim: number;
  /** keyValueHeads * headDim: PEFT's token_dim. */
  tokenDim: number;
}

export function prefixGeometry(config: ModelConfig): PrefixGeometry {
  const keyValueHeads = config.family === "llama" ? config.numKeyValueHeads : config.numHeads;
  const headDim = config.family === "llama" ? config.headDim : config.hiddenSize / config.numHeads;
  return { numLayers: config.numLayers, keyValueHeads, headDim, tokenDim: keyValueHeads * headDim };
}

/** PEFT's PrefixTuningConfig defaults (num_virtual_tokens as the API's). */
export const PREFIX_DEFAULTS = { numVirtualTokens: 20, projection: false } as const;

/** Validates options and fills in the defaults; errors name the field under `path`. */
export function resolvePrefixConfig(options: unknown, geometry: PrefixGeometry, path = "spec.method"): PrefixConfig {
  const raw = optionsObject(options, path, "prefix tuning");
  const numVirtualTokens = checkVirtualTokens(raw.numVirtualTokens ?? PREFIX_DEFAULTS.numVirtualTokens, path);
  const projection = checkBoolean(raw.projection ?? PREFIX_DEFAULTS.projection, `${path}.projection`);
  const hidden = raw.projectionHiddenSize;
  if (hidden !== undefined && !projection) {
    throw new MethodOptionsError(`${path}.projectionHiddenSize`, "is only used with projection: true");
  }
  if (hidden !== undefined && (!Number.isSafeInteger(hidden) || (hidden as number) <= 0)) {
    throw new MethodOptionsError(`${path}.projectionHiddenSize`, `must be a positive integer, got ${JSON.stringify(hidden)}`);
  }
  return { numVirtualTokens, projection, projectionHiddenSize: (hidden as number | undefined) ?? geometry.tokenDim };
}
