import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, KeyValuePrefix, ModelInputs } from "../../model/model.ts";
import type { TensorMap } from "../../safetensors/safetensors.ts";
import type { Adapter, InjectContext, PeftMethod } from "../method.ts";
import { EmbeddingTable, loadVariables, normalValues, promptEmbeddingsTensor, saveVariables, type VirtualTokenTable } from "../prompt/virtual-tokens.ts";
import { prefixGeometry, resolvePrefixConfig, type PrefixConfig, type PrefixGeometry } from "./config.ts";
import { keyValuePrefix, ProjectedPrefixTable } from "./layer.ts";

/** Prefix tuning (Li and Liang 2021), as PEFT's PREFIX_TUNING. */
export const prefixMethod: PeftMethod = {
  type: "prefix",
  inject(model: CausalLM, options: unknown, context: InjectContext): PrefixAdapter {
    const geometry = prefixGeometry(model.config);
    const config = resolvePrefixConfig(options, geometry, context.optionsPath ?? "spec.method");
    const { numVirtualTokens: tokens } = config;
    const width = geometry.numLayers * 2 * geometry.tokenDim;
    const table = config.projection
      ? new ProjectedPrefixTable(tokens, geometry, config.projectionHiddenSize, context.rng)
      : new EmbeddingTable("prompt_encoder.embedding.weight", normalValues(tokens * width, context.rng), tokens, width);
    return new PrefixAdapter(model, table, geometry, prefixTuningConfig(context, geometry, config));
  },
};

/**
 * A method that gives every layer's attention trainable keys and values before the input's own;
 * `table` computes them in PEFT's layout ([tokens, layers * 2 * tokenDim]). The model places the
 * input's positions after the prefix and shows the prefix to every query, as Hugging Face does
 * with past_key_values. Prefix tuning and SK-tuning's prefix variant.
 */
export class PrefixAdapter implements Adapter {
  readonly type: string;

  constructor(
    readonly model: CausalLM,
    readonly table: VirtualTokenTable,
    readonly geometry: PrefixGeometry,
    private readonly config: Record<string, unknown>,
    type = "prefix",
  ) {
    this.type = type;
  }

  /** Prefix positions before the input. */
  get virtualTokens(): number {
    return this.table.tokens;
  }

  forward(inputs: ModelInputs): tf.Tensor3D {
    if (inputs.disableAdapters) return this.model.forward(inputs);
    if (inputs.pastKeyValuesPrefix) throw new Error(`${this.type}: the inputs already carry a prefix; inject one method at a time`);
    return tf.tidy(() => this.model.forward({ ...inputs, pastKeyValuesPrefix: keyValuePrefix(this.table.compute(), this.geometry) }));
  }

  /** The prefix's keys and values, then the input's (read after the prefix, as forward reads it). */
  keyValues(inputs: ModelInputs): KeyValuePrefix[] {
    if (inputs.disableAdapters) return this.model.keyValues(inputs);
    if (inputs.pastKeyValuesPrefix) throw new Error(`${this.type}: the inputs already carry a prefix; inject one method at a time`);
    const prefix = tf.tidy(() => keyValuePrefix(this.table.compute(), this.geometry).map(({ key, value }) => [key, value])).map(([key, value]) => ({ key: key!, value: value! }));
    try {
      return this.model.keyValues({ ...inputs, pastKeyValuesPrefix: prefix });
    } finally {
      for (const { key, value } of prefix) tf.dispose([key, value]);
    }
  }

  trainableVariables(): Map<string, tf.Variable> {
    return new Map(this.table.variables);
  }

  trainableParameterCount(): number {
    let count = 0;
    for (const variable of this.table.variables.values()) count += variable.size;
    return count;
  }

  /** `prompt_embeddings` [tokens, layers * 2 * tokenDim]: with projection, the MLP's output, which PEFT loads in its place. */
  exportTensors(): TensorMap {
    return promptEmbeddingsTensor(this.table);
  }

  adapterConfig(): Record<string, unknown> {
    return { ...this.config };
  }

  merge(): TensorMap {
    throw new Error(`${this.type}: a prefix of keys and values is not a weight of the model, so there is nothing to merge; load the adapter with PEFT instead`);
  }

  saveState(): TensorMap {
    return saveVariables(this.table.variables);
  }

  loadState(state: TensorMap): void {
    loadVariables(this.type, this.table.variables, state);
  }

  remove(): void {
    this.table.dispose();
  }
}

/**
 * adapter_config.json as PEFT 0.21 writes a PrefixTuningConfig for this model, keys sorted:
 * token_dim and num_attention_heads count key/value heads (PEFT's grouped-query rule), and
 * encoder_hidden_size defaults to token_dim.
 */
export function prefixTuningConfig(
  context: InjectContext,
  geometry: PrefixGeometry,
  config: Pick<PrefixConfig, "numVirtualTokens" | "projection" | "projectionHiddenSize">,
): Record<string, unknown> {
  return {
    auto_mapping: null,
    base_model_name_or_path: context.baseModelNameOrPath,
    encoder_hidden_size: config.projection ? config.projectionHiddenSize : geometry.tokenDim,
    inference_mode: true,
    init_weights: null,
    modules_to_save: null,
    num_attention_heads: geometry.keyValueHeads,
    num_layers: geometry.numLayers,
    num_transformer_submodules: 1,
    num_virtual_tokens: config.numVirtualTokens,
    peft_type: "PREFIX_TUNING",
    prefix_projection: config.projection,
    revision: null,
    task_type: context.taskType ?? "CAUSAL_LM",
    token_dim: geometry.tokenDim,
  };
}
