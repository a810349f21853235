import { createHash } from "node:crypto";
import * as tf from "@tensorflow/tfjs-core";
import { StorageError } from "../../storage/object-store.ts";
import type { BatchData, TokenBatch } from "../data/batching.ts";
import type { Adapter } from "../methods/method.ts";
import type { ForwardContext } from "../model/model.ts";
import { CheckpointMismatchError } from "../train/loop.ts";
import { nextTokenTargets } from "../train/loss.ts";
import { applyGradients, countTokens, GradientSums, hiddenStates, type StepOptions } from "../train/step.ts";
import { sequenceLogProbabilities } from "./log-probabilities.ts";
import type { Objective, ObjectiveEvalResult, ObjectivePreparation, ObjectiveStepResult, PreferenceMetrics } from "./objective.ts";

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
 * For an adapter method the reference model π_ref is the same model with the adapter disabled:
 * no second copy of the weights, and its log-probabilities are computed without a gradient tape.
 * Full fine-tuning trains the base weights themselves, so disabling "the adapter" would give
 * the policy, not the reference. There the reference log-probabilities are precomputed, as
 * TRL's precompute_ref_log_probs does: before the first step, one pass of the model as it is
 * then (the frozen initial model) over every training and eval record, the same rows the steps
 * see (the loader's masks and truncation), stored by each row's tokens. They are written beside
 * the checkpoints (prepare) and read back on resume: recomputing them then would use the
 * trained weights.
 */
export interface DpoOptions {
  /** β: how far the policy may move from the reference; TRL's default 0.1. */
  beta: number;
  /** ε in [0, 0.5): the assumed share of flipped preference labels; 0 is plain DPO. */
  labelSmoothing: number;
}

/**
 * Where π_ref's log-probabilities come from: the model with the adapter disabled, computed with
 * each step; or precomputed once, before training, from the model as it is then.
 */
export type DpoReference = "adapter-disabled" | "precomputed";

/** The objective for an adapter: full fine-tuning gets precomputed reference log-probabilities. */
export function dpoObjective(options: DpoOptions, adapter: Pick<Adapter, "type" | "trainsBaseWeights">): DpoObjective {
  if (!(options.beta > 0) || !Number.isFinite(options.beta)) throw new Error(`spec.objective.dpo.beta: must be a positive number, got ${options.beta}`);
  if (!(options.labelSmoothing >= 0 && options.labelSmoothing <= 0.5)) {
    throw new Error(`spec.objective.dpo.labelSmoothing: must be between 0 and 0.5, got ${options.labelSmoothing}`);
  }
  return new DpoObjective(options, adapter.trainsBaseWeights ? "precomputed" : "adapter-disabled");
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

/** The file beside a job's checkpoints that holds its precomputed reference log-probabilities. */
export const referenceFileKey = (folder: string, owner: string) => `${folder}/reference-logps-${owner}.json`;

/** What the reference file holds: per row key (rowKey), the row's summed completion log-probability. */
interface ReferenceFile {
  fingerprint: string;
  logps: Record<string, number>;
}

export class DpoObjective implements Objective {
  readonly type = "dpo";
  /** Precomputed reference log-probabilities by rowKey; set by prepare or precomputeReference. */
  private precomputed: Map<string, number> | undefined;

  constructor(
    private readonly options: DpoOptions,
    readonly reference: DpoReference = "adapter-disabled",
  ) {}

  check(batch: BatchData): void {
    preferencePairs(batch);
  }

  /**
   * With precomputed references: on a fresh start, computes them from the model as it is now
   * (before any step) over every training and eval record, and writes them beside the
   * checkpoints before the first checkpoint can exist; on resume, reads them back.
   */
  async prepare(context: ObjectivePreparation): Promise<void> {
    if (this.reference !== "precomputed") return;
    const { store, folder, owner } = context.checkpoints;
    const key = referenceFileKey(folder, owner);
    const where = `${store.uri.replace(/\/+$/, "")}/${key}`;
    if (context.resumed) {
      let file: ReferenceFile;
      try {
        file = JSON.parse((await store.get(key)).toString("utf8")) as ReferenceFile;
      } catch (error) {
        if (error instanceof StorageError && error.code === "NotFound") {
          throw new ReferenceMissingError(
            `${where}: the reference log-probabilities of this DPO run (full fine-tuning) are missing, and they cannot be recomputed from the checkpoint's trained weights; ` +
              "point checkpoint.uri (or output.uri) somewhere new to start over",
          );
        }
        throw error instanceof SyntaxError ? new ReferenceMissingError(`${where}: not JSON (${error.message})`) : error;
      }
      if (file.fingerprint !== context.fingerprint) throw new ReferenceMissingError(`${where}: written by a run with other settings or data; start over with a new checkpoint.uri`);
      this.precomputed = new Map(Object.entries(file.logps));
      return;
    }
    await this.precomputeReference(context.adapter, [context.data.trainBatches(context.batchSize, { epochs: 1 }), ...(context.data.hasEval ? [context.data.evalBatches(context.batchSize)] : [])]);
    const file: ReferenceFile = { fingerprint: context.fingerprint, logps: Object.fromEntries(this.precomputed!) };
    await store.put(key, JSON.stringify(file));
  }

  /**
   * One pass of the model as it is now, without dropout or a gradient tape, over every row of
   * the batches: each row's summed completion log-probability, kept by rowKey.
   */
  async precomputeReference(adapter: Adapter, sources: readonly AsyncIterable<BatchData>[]): Promise<void> {
    const head = adapter.model.outputHead;
    const table = new Map<string, number>();
    for (const batches of sources) {
      for await (const batch of batches) {
        const pair = preferencePairs(batch);
        const joined = joinRows(pair.chosen, pair.rejected);
        const targets = nextTokenTargets(joined.labels, joined.rows, joined.seqLength);
        const logps = tf.tidy(() => sequenceLogProbabilities(hiddenStates(adapter, joined, POLICY_EVAL), head, targets, { context: POLICY_EVAL }).dataSync() as Float32Array);
        for (let row = 0; row < joined.rows; row++) table.set(rowKey(joined, row), logps[row]!);
      }
    }
    this.precomputed = table;
  }

  /** The reference log-probabilities of a joined batch's rows: computed with the adapter disabled, or looked up. */
  private referenceLogProbabilities(adapter: Adapter, joined: TokenBatch, targets: ReturnType<typeof nextTokenTargets>): tf.Tensor1D {
    if (this.reference === "adapter-disabled") {
      return tf.tidy(() => sequenceLogProbabilities(hiddenStates(adapter, joined, REFERENCE), adapter.model.outputHead, targets, { context: REFERENCE }));
    }
    const table = this.precomputed;
    if (!table) throw new Error("dpo: the reference log-probabilities were not precomputed before training (prepare)");
    const values = Float32Array.from({ length: joined.rows }, (_, row) => {
      const value = table.get(rowKey(joined, row));
      if (value === undefined) throw new Error(`dpo: a preference row has no precomputed reference log-probability; the data changed since they were computed`);
      return value;
    });
    return tf.tensor1d(values);
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
      const reference = this.referenceLogProbabilities(adapter, joined, targets);
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
      const policy = tf.tidy(() => sequenceLogProbabilities(hiddenStates(adapter, joined, POLICY_EVAL), head, targets, { context: POLICY_EVAL }));
      const reference = this.referenceLogProbabilities(adapter, joined, targets);
      read.push(splitPairs(policy, reference, pair.chosen.rows));
      tf.dispose([policy, reference]);
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

/**
 * A row's identity for the precomputed references: a hash of its tokens and labels up to its
 * last non-pad position (rows are padded on the right, and how far depends on the batch), so a
 * row finds its value whatever batch, order or epoch it comes in.
 */
export function rowKey(batch: TokenBatch, row: number): string {
  const start = row * batch.seqLength;
  let length = batch.seqLength;
  while (length > 0 && batch.attentionMask[start + length - 1] === 0) length--;
  const bytes = (values: Int32Array) => {
    const part = values.subarray(start, start + length);
    return Buffer.from(part.buffer, part.byteOffset, part.byteLength);
  };
  return createHash("sha256").update(bytes(batch.inputIds)).update(bytes(batch.labels)).digest("base64url");
}

/** A run resumed without its precomputed reference log-probabilities (or with another run's): the job's InvalidSpec, as for a checkpoint of other settings. */
export class ReferenceMissingError extends CheckpointMismatchError {
  override name = "ReferenceMissingError";
}

function countTargets(batch: TokenBatch): number {
  return nextTokenTargets(batch.labels, batch.rows, batch.seqLength).count;
}
