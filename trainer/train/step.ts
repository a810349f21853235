import * as tf from "@tensorflow/tfjs-core";
import type { TokenBatch } from "../data/batching.ts";
import type { Adapter } from "../methods/method.ts";
import type { ForwardContext } from "../model/model.ts";
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
  const clipped = clipByGlobalNorm(gradients, options.maxGradNorm);
  tf.dispose(gradients);
  options.optimizer.apply(clipped.gradients, options.learningRate);
  tf.dispose(clipped.gradients);
  const [lossValue, gradNorm] = tf.tidy(() => tf.stack([loss, clipped.norm]).dataSync());
  tf.dispose([loss, clipped.norm]);
  const tokens = microBatches.reduce((sum, batch) => sum + countTokens(batch), 0);
  return { loss: lossValue!, gradNorm: gradNorm!, tokens, targetTokens };
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

  let summed: tf.Tensor[] | undefined;
  let loss: tf.Scalar | undefined;
  microBatches.forEach((batch, index) => {
    const { value, grads } = tf.variableGrads(() => {
      const hidden = hiddenStates(adapter, batch, { training: true, gradientCheckpointing: options.gradientCheckpointing ?? false });
      return crossEntropySum(hidden, adapter.model.outputHead, targets[index]!, { scale, context: TRAINING });
    }, [...variables]);
    const previousLoss = loss;
    loss = previousLoss ? (tf.add(previousLoss, value) as tf.Scalar) : value;
    if (previousLoss) tf.dispose([previousLoss, value]);
    const gradients = variables.map((variable) => {
      const gradient = grads[variable.name];
      if (!gradient) throw new Error(`no gradient reached trainable variable ${variable.name}; is it used in the forward pass?`);
      return gradient;
    });
    if (!summed) {
      summed = gradients;
    } else {
      const previous = summed;
      summed = previous.map((sum, i) => tf.add(sum, gradients[i]!));
      tf.dispose([...previous, ...gradients]);
    }
  });
  if (!summed || !loss) throw new Error("a training step needs at least one micro-batch");
  return { loss, gradients: summed, targetTokens };
}

/** Summed next-token loss and target count of one batch, without gradients (evaluation). */
export function evalBatchLoss(adapter: Adapter, batch: TokenBatch): { lossSum: number; targetTokens: number } {
  const targets = nextTokenTargets(batch.labels, batch.rows, batch.seqLength);
  if (targets.count === 0) return { lossSum: 0, targetTokens: 0 };
  const lossSum = tf.tidy(() => crossEntropySum(hiddenStates(adapter, batch, { training: false }), adapter.model.outputHead, targets).dataSync()[0]!);
  return { lossSum, targetTokens: targets.count };
}

const TRAINING: ForwardContext = { training: true, disableAdapters: false };

/** The adapter's final hidden states for a token batch; the loss applies the output head. */
function hiddenStates(adapter: Adapter, batch: TokenBatch, options: { training: boolean; gradientCheckpointing?: boolean }): tf.Tensor3D {
  return tf.tidy(() => {
    const shape: [number, number] = [batch.rows, batch.seqLength];
    return adapter.forward({
      inputIds: tf.tensor2d(batch.inputIds, shape, "int32"),
      attentionMask: tf.tensor2d(batch.attentionMask, shape, "int32"),
      skipOutputHead: true,
      ...options,
    });
  });
}

function countTokens(batch: TokenBatch): number {
  let count = 0;
  for (const value of batch.attentionMask) count += value;
  return count;
}
