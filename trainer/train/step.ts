import * as tf from "@tensorflow/tfjs-core";
import type { TokenBatch } from "../data/batching.ts";
import type { Adapter } from "../methods/method.ts";
import type { ForwardContext, ModelInputs } from "../model/model.ts";
import { clipByGlobalNorm, type AdamW } from "../optim/adamw.ts";
import { crossEntropySum, nextTokenTargets } from "./loss.ts";

/** What one optimizer step did. */
export interface StepResult {
  /** Mean next-token loss over every target token of the step's micro-batches. */
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Input tokens processed (padding excluded). */
  tokens: number;
  /** Target tokens the loss averaged over. */
  targetTokens: number;
}

export interface StepOptions {
  optimizer: AdamW;
  learningRate: number;
  /** Clip the global gradient norm to this; 0 turns clipping off. */
  maxGradNorm: number;
  /** Recompute each transformer block in the backward pass instead of keeping its activations. */
  gradientCheckpointing?: boolean;
}

/**
 * One optimizer step over `microBatches` (gradient accumulation): forward and backward on each
 * micro-batch in turn, gradients summed, clipped, and one AdamW update.
 *
 * The loss is averaged over all target tokens of the step, not per micro-batch, so that a step
 * gives the same update however its examples are split into micro-batches (as Hugging Face
 * does since transformers 4.46). Only the adapter's trainable variables get gradients.
 *
 * The loss and the gradient norm stay on the device until the end, where they are read together:
 * one wait for the device per step, not one per micro-batch and another for clipping.
 */
export function trainStep(adapter: Adapter, microBatches: readonly TokenBatch[], options: StepOptions): StepResult {
  const variables = options.optimizer.parameters.map((parameter) => parameter.variable);
  const { loss, gradients, targetTokens } = lossAndGradients(adapter, microBatches, variables, options);
  const { lossValue, gradNorm } = applyGradients(loss, gradients, options);
  const tokens = microBatches.reduce((sum, batch) => sum + countTokens(batch), 0);
  return { loss: lossValue, gradNorm, tokens, targetTokens };
}

/**
 * Clips summed gradients to `options.maxGradNorm` and applies one optimizer update with them,
 * then reads the step's loss and the gradient norm before clipping back together (one wait for
 * the device). Disposes `loss` and `gradients`. Every objective's step ends here.
 */
export function applyGradients(loss: tf.Scalar, gradients: tf.Tensor[], options: StepOptions): { lossValue: number; gradNorm: number } {
  const clipped = clipByGlobalNorm(gradients, options.maxGradNorm);
  tf.dispose(gradients);
  options.optimizer.apply(clipped.gradients, options.learningRate);
  tf.dispose(clipped.gradients);
  const [lossValue, gradNorm] = tf.tidy(() => tf.stack([loss, clipped.norm]).dataSync());
  tf.dispose([loss, clipped.norm]);
  return { lossValue: lossValue!, gradNorm: gradNorm! };
}

/**
 * Gradient accumulation: `add` runs one micro-batch's loss under a gradient tape and adds its
 * value and its gradients for `variables` to running sums kept on the device; `sums` hands them
 * over. Each objective's loss differs; the summing (in micro-batch order, so the float rounding
 * is the same whatever the objective) does not.
 */
export class GradientSums {
  private loss: tf.Scalar | undefined;
  private gradients: tf.Tensor[] | undefined;

  /** `unusedHint` ends the error for a variable no gradient reached, e.g. why lm_head is unused. */
  constructor(
    private readonly variables: readonly tf.Variable[],
    private readonly unusedHint = "",
  ) {}

  /** Records `lossOf` (a scalar, already scaled to its share of the step) and adds its value and gradients. */
  add(lossOf: () => tf.Scalar): void {
    const { value, grads } = tf.variableGrads(lossOf, [...this.variables]);
    const previousLoss = this.loss;
    this.loss = previousLoss ? (tf.add(previousLoss, value) as tf.Scalar) : value;
    if (previousLoss) tf.dispose([previousLoss, value]);
    const gradients = this.variables.map((variable) => {
      const gradient = grads[variable.name];
      if (!gradient) throw new Error(`no gradient reached trainable variable ${variable.name}; is it used in the forward pass?${this.unusedHint}`);
      return gradient;
    });
    if (!this.gradients) {
      this.gradients = gradients;
    } else {
      const previous = this.gradients;
      this.gradients = previous.map((sum, i) => tf.add(sum, gradients[i]!));
      tf.dispose([...previous, ...gradients]);
    }
  }

  /** The summed loss and gradients (in the order of `variables`); the caller disposes them. */
  sums(): { loss: tf.Scalar; gradients: tf.Tensor[] } {
    if (!this.gradients || !this.loss) throw new Error("a training step needs at least one micro-batch");
    return { loss: this.loss, gradients: this.gradients };
  }
}

/**
 * The step's mean loss over all its target tokens and its gradients for `variables` (in that
 * order), summed over the micro-batches, all left on the device.
 */
export function lossAndGradients(
  adapter: Adapter,
  microBatches: readonly TokenBatch[],
  variables: readonly tf.Variable[],
  options: { gradientCheckpointing?: boolean } = {},
): { loss: tf.Scalar; gradients: tf.Tensor[]; targetTokens: number } {
  const targets = microBatches.map((batch) => nextTokenTargets(batch.labels, batch.rows, batch.seqLength));
  const targetTokens = targets.reduce((sum, target) => sum + target.count, 0);
  // A step without a single target token (possible only in odd packed data) changes nothing.
  const scale = 1 / Math.max(1, targetTokens);

  const sums = new GradientSums(variables);
  microBatches.forEach((batch, index) => {
    sums.add(() => {
      const hidden = hiddenStates(adapter, batch, { training: true, gradientCheckpointing: options.gradientCheckpointing ?? false });
      return crossEntropySum(hidden, adapter.model.outputHead, targets[index]!, { scale, context: TRAINING });
    });
  });
  const { loss, gradients } = sums.sums();
  return { loss, gradients, targetTokens };
}

/** Summed next-token loss and target count of one batch, without gradients (evaluation). */
export function evalBatchLoss(adapter: Adapter, batch: TokenBatch): { lossSum: number; targetTokens: number } {
  const targets = nextTokenTargets(batch.labels, batch.rows, batch.seqLength);
  if (targets.count === 0) return { lossSum: 0, targetTokens: 0 };
  const lossSum = tf.tidy(() => crossEntropySum(hiddenStates(adapter, batch, { training: false }), adapter.model.outputHead, targets).dataSync()[0]!);
  return { lossSum, targetTokens: targets.count };
}

const TRAINING: ForwardContext = { training: true, disableAdapters: false };

/**
 * The adapter's final hidden states [rows, seq, hidden] for a token batch, without the output
 * head (the chunked losses and the score heads apply their own). `context` adds the forward
 * flags: training, disableAdapters (a reference model), gradientCheckpointing.
 */
export function hiddenStates(
  adapter: Adapter,
  batch: TokenBatch,
  context: Pick<ModelInputs, "training" | "disableAdapters" | "gradientCheckpointing">,
): tf.Tensor3D {
  return tf.tidy(() => {
    const shape: [number, number] = [batch.rows, batch.seqLength];
    return adapter.forward({
      inputIds: tf.tensor2d(batch.inputIds, shape, "int32"),
      attentionMask: tf.tensor2d(batch.attentionMask, shape, "int32"),
      skipOutputHead: true,
      ...context,
    });
  });
}

/** Input tokens of a batch, padding excluded. */
export function countTokens(batch: TokenBatch): number {
  let count = 0;
  for (const value of batch.attentionMask) count += value;
  return count;
}
