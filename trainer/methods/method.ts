import type * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, KeyValuePrefix, ModelInputs } from "../model/model.ts";
import type { Rng } from "../random.ts";
import type { TensorMap } from "../safetensors/safetensors.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";

/**
 * The one interface every parameter-efficient method implements (PEFT's tuners/<method>):
 * inject into a frozen model, train its variables, export them in PEFT's format, merge.
 * A method lives in its own folder (config.ts, layer.ts, model.ts) and one line in registry.ts.
 */
export interface PeftMethod {
  /** The FineTuneJob's method.type, e.g. "lora". */
  readonly type: string;
  /**
   * Adds the method's trainable parts to `model`. `options` is the FineTuneJob's method block;
   * the method validates it and fills in its defaults.
   */
  inject(model: CausalLM, options: unknown, context: InjectContext): Adapter;
}

export interface InjectContext {
  /** Draws initial values and dropout masks. Its state belongs in checkpoints (Rng.state()). */
  rng: Rng;
  /** Recorded as base_model_name_or_path in adapter_config.json. */
  baseModelNameOrPath: string;
  /** PEFT's task_type; default CAUSAL_LM. */
  taskType?: "CAUSAL_LM" | "SEQ_CLS";
  /** Where the method's options sit in the FineTuneJob, for error messages; default "spec.method". */
  optionsPath?: string;
  /** The base model's tokenizer, for methods initialised from text (prompt tuning's TEXT init, SK-tuning). */
  tokenizer?: Tokenizer;
}

/** A method injected into one model. */
export interface Adapter {
  readonly type: string;
  readonly model: CausalLM;
  /** Positions the method places before every input (prompt and prefix tuning); none when absent. */
  readonly virtualTokens?: number;
  /**
   * True when the method trains the base model's own weights (full fine-tuning): its trainable
   * parameters are the model's rather than added to them, and its output is a whole model
   * folder (merge()'s state dict) instead of an adapter.
   */
  readonly trainsBaseWeights?: boolean;
  /**
   * Logits [batch, seq, vocab] with the adapter applied. Methods that rewrite the inputs
   * (prompt or prefix tuning) do it here, passing the other inputs on to model.forward
   * (skipOutputHead makes it the final hidden states, for the trainer's chunked loss); for the
   * base model alone call model.forward({ ...inputs, disableAdapters: true }).
   */
  forward(inputs: ModelInputs): tf.Tensor3D;
  /**
   * Methods that place virtual tokens before the input (prompt and prefix tuning): each layer's
   * keys and values for `inputs` with those tokens in front, as CausalLM.keyValues gives them,
   * so that a generation cache (trainer/generate) holds the virtual tokens too. Methods that
   * change the model's own modules need none: model.keyValues runs through them.
   */
  keyValues?(inputs: ModelInputs): KeyValuePrefix[];
  /** The variables the optimizer updates, by stable name, in a fixed order. */
  trainableVariables(): Map<string, tf.Variable>;
  /** Number of trainable parameters (for the trainable share reported in metrics). */
  trainableParameterCount(): number;
  /** The tensors of adapter_model.safetensors, under PEFT's names and layouts. */
  exportTensors(): TensorMap;
  /** The adapter_config.json object, keys sorted as PEFT writes them. */
  adapterConfig(): Record<string, unknown>;
  /** The base model's full state dict with the adapter folded into its weights. */
  merge(): TensorMap;
  /** The trainable variables' exact float32 values, by the names of trainableVariables(), for checkpoints. */
  saveState(): TensorMap;
  /** Restores saveState()'s output; every name and shape must match. */
  loadState(state: TensorMap): void;
  /** Takes the adapter out of the model and frees its tensors. */
  remove(): void;
}

/** Options that fail validation; the message starts with the field's path in the FineTuneJob. */
export class MethodOptionsError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
    this.name = "MethodOptionsError";
  }
}
