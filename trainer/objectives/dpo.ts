import * as tf from "@tensorflow/tfjs-core";
import type { BatchData, TokenBatch } from "../data/batching.ts";
import type { Adapter } from "../methods/method.ts";
import type { ForwardContext } from "../model/model.ts";
import { nextTokenTargets } from "../train/loss.ts";
import { applyGradients, countTokens, GradientSums, hiddenStates, type StepOptions } from "../train/step.ts";
import { sequenceLogProbabilities } from "./log-probabilities.ts";
import type { Objective, ObjectiveEvalResult, ObjectiveStepResult, PreferenceMetrics } from "./objective.ts";

/**
 * Direct preference optimisation (Rafailov et al. 2023), as TRL's DPOTrainer computes it with
 * loss_type "sigmoid": for a prompt x with a chosen completion y_w and a rejected one y_l,
 *
 *   m = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))
 *   loss = −(1 − ε) log σ(β m) − ε log σ(−β m)
 *
 * averaged over the pairs of an optimizer step, where log π(y|x) sums the completion's token
 * log-probabilities (the prompt's carry none: the labels mask them, data/encode.ts) and ε is
 * labelSmoothing (cDPO, for labels that are wrong with probability ε).
 *
 * The reference model π_ref is the same model with the adapter disabled: no second copy of the
 * weights, and its log-probabilities are computed without a gradient tape. Full fine-tuning
 * trains the base weights themselves, so disabling "the adapter" gives the policy, not the
 * reference: it is refused (dpoObjective) rather than silently training against itself.
 */
export interface DpoOptions {
  /** β: how far the policy may move from the reference; TRL's default 0.1. */
  beta: number;
  /** ε in [0, 0.5): the assumed share of flipped preference labels; 0 is plain DPO. */
  labelSmoothing: number;
}

/** The objective for an adapter; throws when the adapter cannot give a reference model. */
export function dpoObjective(options: DpoOptions, adapter: Pick<Adapter, "type" | "trainsBaseWeights">): Objective {
  if (!(options.beta > 0) || !Number.isFinite(options.beta)) throw new Error(`spec.objective.dpo.beta: must be a positive number, got ${options.beta}`);
  if (!(options.labelSmoothing >= 0 && options.labelSmoothing <= 0.5)) {
    throw new Error(`spec.objective.dpo.labelSmoothing: must be between 0 and 0.5, got ${options.labelSmoothing}`);
  }
  if (adapter.trainsBaseWeights) {
    throw new Error(
      `spec.method.type: dpo needs a reference model, which for adapter methods is the base model with the adapter disabled; ` +
        `method "${adapter.type}" trains the base weights themselves, and precomputed reference log-probabilities are not implemented yet: use an adapter method such as lora`,
    );
  }
  return new DpoObjective(options);
}

const TRAINING: ForwardContext = { training: true, disableAdapters: false };
const POLICY_EVAL: ForwardContext = { training: false, disableAdapters: false };
const REFERENCE: ForwardContext = { training: false, disableAdapters: true };

/** The summed completion log-probabilities of one micro-batch's pairs, as read back from the device. */
export interface PairLogProbabilities {
  policyChosen: Float32Array;
  policyRejected: Float32Array;
  referenceChosen: Float32Array;
  referenceRejected: Float32Array;
}

export class DpoObjective implements Objective {
  readonly type = "dpo";

  constructor(private readonly options: DpoOptions) {}

  check(batch: BatchData): void {
    preferencePairs(batch);
  }

  trainStep(adapter: Adapter, microBatches: readonly BatchData[], options: StepOptions): ObjectiveStepResult {
    const variables = options.optimizer.parameters.map((parameter) => parameter.variable);
    const { loss, gradients: summed, logProbabilities, tokens, targetTokens } = this.lossAndGradients(adapter, microBatches, variables, options);
    const { lossValue, gradNorm } = applyGradients(loss, summed, options);
    return { loss: lossValue, gradNorm, tokens, targetTokens, preference: this.metrics(logProbabilities) };
  }

  /**
   * The step's mean DPO loss over all its pairs and its gradients for `variables` (in that
   * order), summed over the micro-batches and left on the device, with each micro-batch's
   * log-probabilities read back for the metrics.
   */
  lossAndGradients(
    adapter: Adapter,
    microBatches: readonly BatchData[],
    variables: readonly tf.Variable[],
    options: { gradientCheckpointing?: boolean } = {},
  ): { loss: tf.Scalar; gradients: tf.Tensor[]; logProbabilities: PairLogProbabilities[]; tokens: number; targetTokens: number } {
    const pairs = microBatches.map(preferencePairs);
    // The mean over the step's pairs, not per micro-batch: the same update however the pairs are split.
    const pairCount = pairs.reduce((sum, pair) => sum + pair.chosen.rows, 0);
    const head = adapter.model.outputHead;

    const sums = new GradientSums(variables);
    const logProbabilities: PairLogProbabilities[] = [];
    for (const pair of pairs) {
      const joined = joinRows(pair.chosen, pair.rejected);
      const targets = nextTokenTargets(joined.labels, joined.rows, joined.seqLength);
      // Computed before the tape starts: the reference gets no gradient and keeps nothing for one.
      const reference = tf.tidy(() => sequenceLogProbabilities(hiddenStates(adapter, joined, REFERENCE), head, targets, { context: REFERENCE }));
      let policy: tf.Tensor1D | undefined;
      sums.add(() => {
        const hidden = hiddenStates(adapter, joined, { ...TRAINING, gradientCheckpointing: options.gradientCheckpointing ?? false });
        const logps = sequenceLogProbabilities(hidden, head, targets, { context: TRAINING });
        policy = tf.keep(logps);
        return tf.div(tf.sum(this.pairLosses(logps, reference)), pairCount) as tf.Scalar;
      });
      logProbabilities.push(splitPairs(policy!, reference, pair.chosen.rows));
      tf.dispose([policy!, reference]);
    }
    const { loss, gradients } = sums.sums();
    const tokens = pairs.reduce((sum, pair) => sum + countTokens(pair.chosen) + countTokens(pair.rejected), 0);
    const targetTokens = pairs.reduce((sum, pair) => sum + countTargets(pair.chosen) + countTargets(pair.rejected), 0);
    return { loss, gradients, logProbabilities, tokens, targetTokens };
  }

  async evaluate(adapter: Adapter, batches: AsyncIterable<BatchData>): Promise<ObjectiveEvalResult | undefined> {
    const head = adapter.model.outputHead;
    const read: PairLogProbabilities[] = [];
    let tokens = 0;
    for await (const batch of batches) {
      const pair = preferencePairs(batch);
      const joined = joinRows(pair.chosen, pair.rejected);
      const targets = nextTokenTargets(joined.labels, joined.rows, joined.seqLength);
      const [policy, reference] = tf.tidy(() => [
        sequenceLogProbabilities(hiddenStates(adapter, joined, POLICY_EVAL), head, targets, { context: POLICY_EVAL }),
        sequenceLogProbabilities(hiddenStates(adapter, joined, REFERENCE), head, targets, { context: REFERENCE }),
      ]);
      read.push(splitPairs(policy!, reference!, pair.chosen.rows));
      tf.dispose([policy!, reference!]);
      tokens += countTokens(joined);
    }
    if (read.length === 0) return undefined;
    const losses: Float32Array = tf.tidy(() => {
      const concat = (pick: (p: PairLogProbabilities) => Float32Array) => tf.tensor1d(Float32Array.from(read.flatMap((p) => [...pick(p)])));
      const policy = tf.concat([concat((p) => p.policyChosen), concat((p) => p.policyRejected)]) as tf.Tensor1D;
      const reference = tf.concat([concat((p) => p.referenceChosen), concat((p) => p.referenceRejected)]) as tf.Tensor1D;
      return this.pairLosses(policy, reference).dataSync() as Float32Array;
    });
    const loss = losses.reduce((sum, value) => sum + value, 0) / losses.length;
    return { loss, tokens, preference: this.metrics(read) };
  }

  /**
   * Per pair, the DPO loss from the summed log-probabilities of [chosen rows; rejected rows]
   * under the policy and the reference.
   */
  pairLosses(policy: tf.Tensor1D, reference: tf.Tensor1D): tf.Tensor1D {
    const { beta, labelSmoothing } = this.options;
    const pairs = policy.shape[0] / 2;
    const [chosen, rejected] = tf.split(tf.sub(policy, reference), [pairs, pairs]);
    const scaled = tf.mul(tf.sub(chosen!, rejected!), beta);
    const agree = tf.mul(logSigmoid(scaled), -(1 - labelSmoothing));
    return (labelSmoothing > 0 ? tf.sub(agree, tf.mul(logSigmoid(tf.neg(scaled)), labelSmoothing)) : agree) as tf.Tensor1D;
  }

  private metrics(read: readonly PairLogProbabilities[]): PreferenceMetrics {
    const { beta } = this.options;
    let count = 0;
    const sums = { rewardsChosen: 0, rewardsRejected: 0, rewardsAccuracies: 0, rewardsMargins: 0, logpsChosen: 0, logpsRejected: 0 };
    for (const p of read) {
      for (let i = 0; i < p.policyChosen.length; i++) {
        const chosen = beta * (p.policyChosen[i]! - p.referenceChosen[i]!);
        const rejected = beta * (p.policyRejected[i]! - p.referenceRejected[i]!);
        sums.rewardsChosen += chosen;
        sums.rewardsRejected += rejected;
        sums.rewardsAccuracies += chosen > rejected ? 1 : 0;
        sums.rewardsMargins += chosen - rejected;
        sums.logpsChosen += p.policyChosen[i]!;
        sums.logpsRejected += p.policyRejected[i]!;
        count++;
      }
    }
    const mean = (value: number) => (count > 0 ? value / count : 0);
    return {
      rewardsChosen: mean(sums.rewardsChosen),
      rewardsRejected: mean(sums.rewardsRejected),
      rewardsAccuracies: mean(sums.rewardsAccuracies),
      rewardsMargins: mean(sums.rewardsMargins),
      logpsChosen: mean(sums.logpsChosen),
      logpsRejected: mean(sums.logpsRejected),
    };
  }
}

/**
 * log σ(x) = −softplus(−x), from ops with registered gradients: tfjs's own logSigmoid keeps its
 * input in a closure for the backward pass, and tf.variableGrads disposes that input when the
 * forward pass ends.
 */
function logSigmoid(x: tf.Tensor): tf.Tensor {
  return tf.neg(tf.softplus(tf.neg(x)));
}

function preferencePairs(batch: BatchData): { chosen: TokenBatch; rejected: TokenBatch } {
  if (batch.kind !== "preference") {
    throw new Error(`objective dpo trains on preference pairs, but the dataset gives ${batch.kind} batches; use dataset.format preference`);
  }
  return batch;
}

/** Chosen rows then rejected rows, as one batch: one forward pass for both (TRL's concatenated_forward). */
export function joinRows(chosen: TokenBatch, rejected: TokenBatch): TokenBatch {
  if (chosen.seqLength !== rejected.seqLength || chosen.rows !== rejected.rows) {
    throw new Error(`chosen (${chosen.rows} x ${chosen.seqLength}) and rejected (${rejected.rows} x ${rejected.seqLength}) rows must have the same shape`);
  }
  const join = (a: Int32Array, b: Int32Array) => {
    const out = new Int32Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  };
  return {
    rows: chosen.rows * 2,
    seqLength: chosen.seqLength,
    inputIds: join(chosen.inputIds, rejected.inputIds),
    attentionMask: join(chosen.attentionMask, rejected.attentionMask),
    labels: join(chosen.labels, rejected.labels),
  };
}

function splitPairs(policy: tf.Tensor1D, reference: tf.Tensor1D, pairs: number): PairLogProbabilities {
  const p = policy.dataSync() as Float32Array;
  const r = reference.dataSync() as Float32Array;
  return {
    policyChosen: p.slice(0, pairs),
    policyRejected: p.slice(pairs, 2 * pairs),
    referenceChosen: r.slice(0, pairs),
    referenceRejected: r.slice(pairs, 2 * pairs),
  };
}

function countTargets(batch: TokenBatch): number {
  return nextTokenTargets(batch.labels, batch.rows, batch.seqLength).count;
}
