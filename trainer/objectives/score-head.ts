import * as tf from "@tensorflow/tfjs-core";
import type { Adapter } from "../methods/method.ts";
import type { ModelInputs } from "../model/model.ts";
import type { Rng } from "../random.ts";
import type { TensorMap } from "../safetensors/safetensors.ts";

/**
 * A sequence-classification head on a causal LM, as transformers' *ForSequenceClassification
 * has it: `score`, a linear layer without bias from the final hidden state of each row's last
 * non-padding token to `labels` outputs (1 for a reward model). PEFT trains it beside the
 * adapter for task_type SEQ_CLS (modules_to_save ["classifier", "score"]) and saves it in
 * adapter_model.safetensors as `base_model.model.score.weight` [labels, hidden].
 */
export const SCORE_STATE_NAME = "score.weight";
export const SCORE_EXPORT_NAME = "base_model.model.score.weight";

let heads = 0;

/** The adapter with a trained score head: its variables, checkpoints and export include the head's. */
export class ScoreHeadAdapter implements Adapter {
  readonly type: string;
  readonly model: Adapter["model"];
  readonly virtualTokens?: number;
  readonly trainsBaseWeights?: boolean;
  /** [hidden, labels], so that scores are hidden · kernel. */
  readonly kernel: tf.Variable;

  constructor(
    private readonly inner: Adapter,
    readonly labels: number,
    rng: Rng,
  ) {
    this.type = inner.type;
    this.model = inner.model;
    if (inner.virtualTokens !== undefined) this.virtualTokens = inner.virtualTokens;
    if (inner.trainsBaseWeights !== undefined) this.trainsBaseWeights = inner.trainsBaseWeights;
    const hidden = inner.model.config.hiddenSize;
    // transformers initialises a new Linear from a normal of std initializer_range (0.02).
    const values = Float32Array.from({ length: hidden * labels }, () => 0.02 * rng.normal());
    this.kernel = tf.variable(tf.tensor2d(values, [hidden, labels]), true, `kubetune_score_${heads++}`);
  }

  forward(inputs: ModelInputs): tf.Tensor3D {
    return this.inner.forward(inputs);
  }

  /**
   * Scores [rows, labels] from the final hidden states [rows, seq, hidden]: each row's last
   * position with attention (right padding, so its length − 1), through the head.
   */
  scores(hidden: tf.Tensor3D, attentionMask: Int32Array): tf.Tensor2D {
    const [rows, seqLength, width] = hidden.shape;
    const last = Int32Array.from({ length: rows }, (_, row) => {
      let length = 0;
      for (let t = 0; t < seqLength; t++) length += attentionMask[row * seqLength + t]!;
      if (length === 0) throw new Error(`row ${row} of the batch has no token`);
      return row * seqLength + length - 1;
    });
    const pooled = tf.gather(tf.reshape(hidden, [rows * seqLength, width]), tf.tensor1d(last, "int32"));
    return tf.matMul(pooled, this.kernel) as tf.Tensor2D;
  }

  trainableVariables(): Map<string, tf.Variable> {
    return new Map([...this.inner.trainableVariables(), [SCORE_STATE_NAME, this.kernel]]);
  }

  trainableParameterCount(): number {
    return this.inner.trainableParameterCount() + this.kernel.size;
  }

  exportTensors(): TensorMap {
    const tensors = this.inner.exportTensors();
    tensors.set(SCORE_EXPORT_NAME, { shape: [this.labels, this.kernel.shape[0]], data: tf.tidy(() => tf.transpose(this.kernel).dataSync() as Float32Array) });
    return tensors;
  }

  adapterConfig(): Record<string, unknown> {
    return { ...this.inner.adapterConfig(), modules_to_save: ["classifier", "score"], task_type: "SEQ_CLS" };
  }

  merge(): TensorMap {
    throw new Error("a model with a score head is not merged into the base model: load the adapter and its score head with PEFT (task_type SEQ_CLS)");
  }

  saveState(): TensorMap {
    const state = this.inner.saveState();
    state.set(SCORE_STATE_NAME, { shape: [...this.kernel.shape], data: Float32Array.from(this.kernel.dataSync() as Float32Array) });
    return state;
  }

  loadState(state: TensorMap): void {
    const score = state.get(SCORE_STATE_NAME);
    if (!score || score.data.length !== this.kernel.size) throw new Error(`score head state: "${SCORE_STATE_NAME}" is missing or has the wrong size`);
    const rest = new Map(state);
    rest.delete(SCORE_STATE_NAME);
    this.inner.loadState(rest);
    this.kernel.assign(tf.tensor(score.data, this.kernel.shape));
  }

  remove(): void {
    this.kernel.dispose();
    this.inner.remove();
  }
}
