import * as tf from "@tensorflow/tfjs-core";
import type { TokenBatch } from "../data/batching.ts";
import type { Adapter } from "../methods/method.ts";
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
}

/**
 * One optimizer step over `microBatches` (gradient accumulation): forward and backward on each
 * micro-batch in turn, gradients summed, clipped, and one AdamW update.
 *
 * The loss is averaged over all target tokens of the step, not per micro-batch, so that a step
 * gives the same update however its examples are split into micro-batches (as Hugging Face
 * does since transformers 4.46). Only the adapter's trainable variables get gradients.
 */
export function trainStep(adapter: Adapter, microBatches: readonly TokenBatch[], options: StepOptions): StepResult {
  const variables = options.optimizer.parameters.map((parameter) => parameter.variable);
  const targets = microBatches.map((batch) => nextTokenTargets(batch.labels, batch.rows, batch.seqLength));
  const targetTokens = targets.reduce((sum, target) => sum + target.count, 0);
  // A step without a single target token (possible only in odd packed data) changes nothing.
  const scale = 1 / Math.max(1, targetTokens);

  let summed: tf.Tensor[] | undefined;
  let loss = 0;
  microBatches.forEach((batch, index) => {
    const { value, grads } = tf.variableGrads(() => {
      const logits = forwardBatch(adapter, batch, true);
      return crossEntropySum(logits, targets[index]!, scale);
    }, variables);
    loss += value.dataSync()[0]!;
    value.dispose();
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
  if (!summed) throw new Error("a training step needs at least one micro-batch");

  const clipped = clipByGlobalNorm(summed, options.maxGradNorm);
  tf.dispose(summed);
  options.optimizer.apply(clipped.gradients, options.learningRate);
  tf.dispose(clipped.gradients);
  const tokens = microBatches.reduce((sum, batch) => sum + countTokens(batch), 0);
  return { loss, gradNorm: clipped.norm, tokens, targetTokens };
}

/** Summed next-token loss and target count of one batch, without gradients (evaluation). */
export function evalBatchLoss(adapter: Adapter, batch: TokenBatch): { lossSum: number; targetTokens: number } {
  const targets = nextTokenTargets(batch.labels, batch.rows, batch.seqLength);
  if (targets.count === 0) return { lossSum: 0, targetTokens: 0 };
  const lossSum = tf.tidy(() => crossEntropySum(forwardBatch(adapter, batch, false), targets).dataSync()[0]!);
  return { lossSum, targetTokens: targets.count };
}

/** The adapter's logits for a token batch. */
export function forwardBatch(adapter: Adapter, batch: TokenBatch, training: boolean): tf.Tensor3D {
  return tf.tidy(() => {
    const shape: [number, number] = [batch.rows, batch.seqLength];
    return adapter.forward({
      inputIds: tf.tensor2d(batch.inputIds, shape, "int32"),
      attentionMask: tf.tensor2d(batch.attentionMask, shape, "int32"),
      training,
    });
  });
}

function countTokens(batch: TokenBatch): number {
  let count = 0;
  for (const value of batch.attentionMask) count += value;
  return count;
}
