import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, KeyValuePrefix, ModelInputs } from "../../model/model.ts";
import type { TensorMap } from "../../safetensors/safetensors.ts";
import { MethodOptionsError, type Adapter, type InjectContext, type PeftMethod } from "../method.ts";
import { initTokenIds, resolvePromptConfig, type PromptConfig } from "./config.ts";
import { forwardWithVirtualTokens, inputsWithVirtualTokens } from "./layer.ts";
import { EmbeddingTable, loadVariables, normalValues, promptEmbeddingsTensor, saveVariables, type VirtualTokenTable } from "./virtual-tokens.ts";

/** The checkpoint name of the prompt, PEFT's parameter name while training. */
export const PROMPT_EMBEDDING_NAME = "prompt_encoder.embedding.weight";

/** Prompt tuning (Lester et al. 2021), as PEFT's PROMPT_TUNING. */
export const promptMethod: PeftMethod = {
  type: "prompt",
  inject(model: CausalLM, options: unknown, context: InjectContext): PromptAdapter {
    const path = context.optionsPath ?? "spec.method";
    const config = resolvePromptConfig(options, path);
    const { numVirtualTokens: tokens } = config;
    const hidden = model.config.hiddenSize;
    let initial: Float32Array;
    if (config.init === "TEXT") {
      if (!context.tokenizer) throw new MethodOptionsError(`${path}.init`, "TEXT needs the model's tokenizer, which the trainer did not pass");
      // PEFT tokenizes with the tokenizer's special tokens (tokenizer(init_text)["input_ids"]).
      const ids = initTokenIds(context.tokenizer.encode(config.initText!, { addSpecialTokens: true }), tokens, path);
      initial = frozenEmbeddings(model, ids);
    } else {
      initial = normalValues(tokens * hidden, context.rng);
    }
    const table = new EmbeddingTable(PROMPT_EMBEDDING_NAME, initial, tokens, hidden);
    return new PromptAdapter(model, table, promptTuningConfig(model, context, config));
  },
};

/** The frozen word embeddings of `ids`, [ids, hidden] row-major. */
export function frozenEmbeddings(model: CausalLM, ids: readonly number[]): Float32Array {
  const { vocabSize } = model.config;
  const outside = ids.find((id) => id < 0 || id >= vocabSize);
  if (outside !== undefined) throw new Error(`token id ${outside} is outside the model's vocabulary of ${vocabSize}`);
  return tf.tidy(() => Float32Array.from(model.embed(tf.tensor2d([...ids], [1, ids.length], "int32")).dataSync() as Float32Array));
}

/**
 * A method that prepends virtual tokens to the input embeddings; `table` computes them
 * ([tokens, hidden]). Prompt tuning and SK-tuning's prompt variant.
 */
export class PromptAdapter implements Adapter {
  readonly type: string;

  constructor(
    readonly model: CausalLM,
    readonly table: VirtualTokenTable,
    private readonly config: Record<string, unknown>,
    type = "prompt",
  ) {
    this.type = type;
  }

  /** Virtual tokens placed before the input. */
  get virtualTokens(): number {
    return this.table.tokens;
  }

  forward(inputs: ModelInputs): tf.Tensor3D {
    if (inputs.disableAdapters) return this.model.forward(inputs);
    return tf.tidy(() => forwardWithVirtualTokens(this.model, inputs, this.table.compute()));
  }

  /** The virtual tokens' keys and values, then the input's: positions count from the first virtual token, as in forward. */
  keyValues(inputs: ModelInputs): KeyValuePrefix[] {
    if (inputs.disableAdapters) return this.model.keyValues(inputs);
    const withVirtual: ModelInputs = tf.tidy(() => inputsWithVirtualTokens(this.model, inputs, this.table.compute()) as ModelInputs & tf.TensorContainerObject);
    try {
      return this.model.keyValues(withVirtual);
    } finally {
      tf.dispose([withVirtual.inputsEmbeds!, ...(withVirtual.attentionMask ? [withVirtual.attentionMask] : [])]);
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

  /** `prompt_embeddings` [tokens, hidden], the name PEFT saves and loads (no base_model prefix). */
  exportTensors(): TensorMap {
    return promptEmbeddingsTensor(this.table);
  }

  adapterConfig(): Record<string, unknown> {
    return { ...this.config };
  }

  merge(): TensorMap {
    throw new Error(`${this.type}: virtual tokens are inputs, not weights, so there is nothing to merge into the base model; load the adapter with PEFT instead`);
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
 * adapter_config.json as PEFT 0.21 writes a PromptTuningConfig, keys sorted. token_dim is the
 * hidden size; with TEXT, tokenizer_name_or_path must be set for PEFT to accept the config, and
 * the base model's folder holds the tokenizer.
 */
export function promptTuningConfig(
  model: CausalLM,
  context: InjectContext,
  config: Pick<PromptConfig, "numVirtualTokens" | "init" | "initText">,
): Record<string, unknown> {
  const text = config.init === "TEXT";
  return {
    auto_mapping: null,
    base_model_name_or_path: context.baseModelNameOrPath,
    inference_mode: true,
    modules_to_save: null,
    num_attention_heads: model.config.numHeads,
    num_layers: model.config.numLayers,
    num_transformer_submodules: 1,
    num_virtual_tokens: config.numVirtualTokens,
    peft_type: "PROMPT_TUNING",
    prompt_tuning_init: config.init,
    prompt_tuning_init_text: text ? config.initText : null,
    revision: null,
    task_type: context.taskType ?? "CAUSAL_LM",
    token_dim: model.config.hiddenSize,
    tokenizer_kwargs: null,
    tokenizer_name_or_path: text ? context.baseModelNameOrPath : null,
  };
}
