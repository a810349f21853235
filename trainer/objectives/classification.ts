import * as tf from "@tensorflow/tfjs-core";
import type { BatchData, TokenBatch } from "../data/batching.ts";
import type { DataLoader } from "../data/loader.ts";
import type { Adapter } from "../methods/method.ts";
import type { ForwardContext } from "../model/model.ts";
import { applyGradients, countTokens, GradientSums, hiddenStates, type StepOptions } from "../train/step.ts";
import type { Objective, ObjectiveEvalResult, ObjectiveStepResult } from "./objective.ts";
import { ScoreHeadAdapter } from "./score-head.ts";

/**
 * Sequence classification (dataset.format classification), as transformers'
 * *ForSequenceClassification trains with PEFT's task_type SEQ_CLS: the adapter and a score head
 * (score-head.ts) with one output per class over the last token, and the cross-entropy of the
 * class, averaged over the examples of a step. Evaluation reports the loss and the accuracy.
 */
export function classificationObjective(adapter: Adapter): Objective {
  if (!(adapter instanceof ScoreHeadAdapter) || adapter.labels < 2) {
    throw new Error("the classification objective needs the adapter wrapped with a score head of one output per class (ScoreHeadAdapter)");
  }
  return new ClassificationObjective();
}

/**
 * The number of classes: the length of the class names when given, else one more than the
 * largest integer label in the training data (one pass over it).
 */
export async function classCount(data: DataLoader, classLabels: readonly string[] | undefined): Promise<number> {
  if (classLabels !== undefined) return classLabels.length;
  let largest = -1;
  for await (const batch of data.trainBatches(64, { epochs: 1 })) {
    if (batch.kind !== "classification") throw new Error(`the classification format gives ${batch.kind} batches`);
    for (const label of batch.classLabels) largest = Math.max(largest, label);
  }
  if (largest < 1) throw new Error("spec.dataset.labels: the training data has labels of one class only; a classifier needs at least two (list them in dataset.labels)");
  return largest + 1;
}

const TRAINING: ForwardContext = { training: true, disableAdapters: false };
const EVALUATION: ForwardContext = { training: false, disableAdapters: false };

export class ClassificationObjective implements Objective {
  readonly type = "classification";

  check(batch: BatchData): void {
    examplesOf(batch);
  }

  trainStep(adapter: Adapter, microBatches: readonly BatchData[], options: StepOptions): ObjectiveStepResult {
    const head = scoreHead(adapter);
    const batches = microBatches.map(examplesOf);
    const examples = batches.reduce((sum, batch) => sum + batch.tokens.rows, 0);
    const variables = options.optimizer.parameters.map((parameter) => parameter.variable);
    const sums = new GradientSums(variables, " (a classifier does not use lm_head)");
    let right = 0;
    for (const batch of batches) {
      let predicted: tf.Tensor1D | undefined;
      sums.add(() => {
        const logits = head.scores(hiddenStates(adapter, batch.tokens, { ...TRAINING, gradientCheckpointing: options.gradientCheckpointing ?? false }), batch.tokens.attentionMask);
        predicted = tf.keep(tf.argMax(logits, 1) as tf.Tensor1D);
        return tf.div(crossEntropySum(logits, batch.classLabels, head.labels), examples) as tf.Scalar;
      });
      right += countRight(predicted!, batch.classLabels);
      predicted!.dispose();
    }
    const { loss, gradients } = sums.sums();
    const { lossValue, gradNorm } = applyGradients(loss, gradients, options);
    const tokens = batches.reduce((sum, batch) => sum + countTokens(batch.tokens), 0);
    return { loss: lossValue, gradNorm, tokens, targetTokens: 0, accuracy: right / examples };
  }

  async evaluate(adapter: Adapter, batches: AsyncIterable<BatchData>): Promise<ObjectiveEvalResult | undefined> {
    const head = scoreHead(adapter);
    let lossSum = 0;
    let right = 0;
    let examples = 0;
    let tokens = 0;
    for await (const data of batches) {
      const batch = examplesOf(data);
      const [loss, predicted] = tf.tidy(() => {
        const logits = head.scores(hiddenStates(adapter, batch.tokens, EVALUATION), batch.tokens.attentionMask);
        return [crossEntropySum(logits, batch.classLabels, head.labels), tf.argMax(logits, 1) as tf.Tensor1D];
      });
      lossSum += loss!.dataSync()[0]!;
      right += countRight(predicted!, batch.classLabels);
      tf.dispose([loss!, predicted!]);
      examples += batch.tokens.rows;
      tokens += countTokens(batch.tokens);
    }
    if (examples === 0) return undefined;
    return { loss: lossSum / examples, tokens, accuracy: right / examples };
  }
}

/** Σ over rows of −log softmax(logits[row])[label[row]]. */
function crossEntropySum(logits: tf.Tensor2D, labels: Int32Array, classes: number): tf.Scalar {
  for (const label of labels) {
    if (label >= classes) throw new Error(`class label ${label} is out of range: the classifier has ${classes} classes (dataset.labels)`);
  }
  const oneHot = tf.cast(tf.oneHot(tf.tensor1d(labels, "int32"), classes), "float32");
  return tf.neg(tf.sum(tf.mul(tf.logSoftmax(logits), oneHot))) as tf.Scalar;
}

function countRight(predicted: tf.Tensor1D, labels: Int32Array): number {
  const values = predicted.dataSync();
  let right = 0;
  labels.forEach((label, i) => (right += values[i] === label ? 1 : 0));
  return right;
}

function scoreHead(adapter: Adapter): ScoreHeadAdapter {
  if (!(adapter instanceof ScoreHeadAdapter)) throw new Error("the classification objective needs an adapter with a score head");
  return adapter;
}

function examplesOf(batch: BatchData): { tokens: TokenBatch; classLabels: Int32Array } {
  if (batch.kind !== "classification") {
    throw new Error(`objective classification trains on labelled texts, but the dataset gives ${batch.kind} batches; use dataset.format classification`);
  }
  return batch;
}
