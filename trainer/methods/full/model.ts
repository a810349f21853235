import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../../backend/linear.ts";
import { FrozenWeightsModel, type CausalLM, type Linear, type LinearWrapper, type ModelInputs } from "../../model/model.ts";
import type { TensorMap } from "../../safetensors/safetensors.ts";
import { MethodOptionsError, type Adapter, type InjectContext, type PeftMethod } from "../method.ts";

/**
 * Full fine-tuning: every weight of the model trains, and the output is the whole model (a
 * folder that Transformers and vLLM load, written by the trainer from merge()). Nothing is
 * added to the model: its own variables are made trainable, and given back frozen by remove().
 *
 * Two paths need care:
 * - The token embeddings are looked up with gather, whose gradient trainer/backend/gradients.ts
 *   gives every backend (a one-hot matMul where the backend lacks UnsortedSegmentSum, as wasm does).
 * - A tied output head (tie_word_embeddings) computes with a transposed copy of the embeddings,
 *   which would go stale as they train; TiedOutputHead computes with the embeddings themselves,
 *   so the head's gradient reaches them and the saved model stays tied.
 */
export const fullMethod: PeftMethod = {
  type: "full",
  inject(model: CausalLM, options: unknown, context: InjectContext): FullFineTuning {
    const path = context.optionsPath ?? "spec.method";
    if (options !== undefined && options !== null && (typeof options !== "object" || Array.isArray(options) || Object.keys(options).length > 0)) {
      throw new MethodOptionsError(path, `full fine-tuning has no options, got ${JSON.stringify(options)}`);
    }
    if (!(model instanceof FrozenWeightsModel)) throw new MethodOptionsError(path, `full fine-tuning needs a model whose weights are variables; ${model.config.architecture} is not one`);
    const variables = model.weightVariables();
    for (const variable of variables.values()) {
      if (variable.trainable) throw new MethodOptionsError(path, "the model's weights are trained already; inject one method at a time");
    }
    if ([...model.linears.values()].some((module) => module.wrapper)) throw new MethodOptionsError(path, "the model already has an adapter; inject one method at a time");
    let tiedHead: TiedOutputHead | undefined;
    if (model.config.tieWordEmbeddings) {
      const embedding = [...variables].find(([name]) => /(^|\.)(embed_tokens|wte)\.weight$/.test(name))?.[1];
      if (!embedding) throw new MethodOptionsError(path, `${model.config.architecture} ties its output head to an embedding this trainer cannot find`);
      tiedHead = new TiedOutputHead(embedding as tf.Variable<tf.Rank.R2>);
      model.outputHead.wrapper = tiedHead;
    }
    for (const variable of variables.values()) variable.trainable = true;
    return new FullFineTuning(model, variables, tiedHead);
  },
};

/** logits = h · Eᵀ with E the trained embedding matrix [vocab, hidden]. */
class TiedOutputHead implements LinearWrapper {
  constructor(readonly embedding: tf.Variable<tf.Rank.R2>) {}

  forward(x: tf.Tensor): tf.Tensor {
    // Native TensorFlow multiplies by a transposed operand in place; elsewhere an explicit
    // transpose keeps the matMul plain (trainer/backend/linear.ts says why).
    if (tf.getBackend() !== "tensorflow") return linear(x, tf.transpose(this.embedding));
    const [vocab, hidden] = this.embedding.shape;
    const flat = tf.reshape(x, [-1, hidden]) as tf.Tensor2D;
    return tf.reshape(tf.matMul(flat, this.embedding, false, true), [...x.shape.slice(0, -1), vocab]);
  }

  variables(): tf.Variable[] {
    return [this.embedding];
  }
}

export class FullFineTuning implements Adapter {
  readonly type = "full";
  readonly trainsBaseWeights = true;

  constructor(
    readonly model: CausalLM,
    /** The model's weights by Hugging Face name, each a trainable variable while this is injected. */
    private readonly weights: ReadonlyMap<string, tf.Variable>,
    private readonly tiedHead: TiedOutputHead | undefined,
  ) {}

  forward(inputs: ModelInputs): tf.Tensor3D {
    return this.model.forward(inputs);
  }

  /** Every weight, by Hugging Face name (an nn.Linear weight as its [in, out] kernel). */
  trainableVariables(): Map<string, tf.Variable> {
    return new Map(this.weights);
  }

  trainableParameterCount(): number {
    let count = 0;
    for (const variable of this.weights.values()) count += variable.size;
    return count;
  }

  /** The whole model's weights under their Hugging Face names and layouts. */
  exportTensors(): TensorMap {
    return this.model.stateDict();
  }

  /** There is no adapter; what config.json the output gets is the base model's own. */
  adapterConfig(): Record<string, unknown> {
    return {};
  }

  /** The trained model's state dict: the output itself. */
  merge(): TensorMap {
    return this.model.stateDict();
  }

  saveState(): TensorMap {
    const state: TensorMap = new Map();
    for (const [name, variable] of this.weights) state.set(name, { shape: [...variable.shape], data: Float32Array.from(variable.dataSync() as Float32Array) });
    return state;
  }

  loadState(state: TensorMap): void {
    const unexpected = [...state.keys()].filter((name) => !this.weights.has(name));
    if (unexpected.length > 0) throw new Error(`full fine-tuning state: unexpected tensors ${unexpected.join(", ")}; was it saved from another model?`);
    for (const [name, variable] of this.weights) {
      const saved = state.get(name);
      if (!saved) throw new Error(`full fine-tuning state: missing tensor "${name}"`);
      if (saved.shape.length !== variable.shape.length || saved.shape.some((dim, i) => dim !== variable.shape[i])) {
        throw new Error(`full fine-tuning state: tensor "${name}" has shape [${saved.shape.join(", ")}], expected [${variable.shape.join(", ")}]`);
      }
    }
    for (const [name, variable] of this.weights) tf.tidy(() => variable.assign(tf.tensor(state.get(name)!.data, variable.shape)));
  }

  /** Freezes the weights again; they keep their trained values. */
  remove(): void {
    for (const variable of this.weights.values()) variable.trainable = false;
    const head: Linear = this.model.outputHead;
    if (this.tiedHead && head.wrapper === this.tiedHead) head.wrapper = undefined;
  }
}
