import * as tf from "@tensorflow/tfjs-core";
import type { BatchData, TokenBatch } from "../data/batching.ts";
import type { Adapter } from "../methods/method.ts";
import type { ForwardContext } from "../model/model.ts";
import { applyGradients, countTokens, GradientSums, hiddenStates, type StepOptions } from "../train/step.ts";
import { joinRows } from "./dpo.ts";
import type { Objective, ObjectiveEvalResult, ObjectiveStepResult, PreferenceMetrics } from "./objective.ts";
import { ScoreHeadAdapter } from "./score-head.ts";

/**
 * A reward model (TRL's RewardTrainer): the adapter and a one-output score head (score-head.ts)
 * trained on preference pairs with the Bradley-Terry loss
 *
 *   loss = −log σ(r(x, y_w) − r(x, y_l))
 *
 * averaged over the pairs of a step, where r is the score of the pair's whole text (prompt and
 * completion) at its last token. The metrics are the mean rewards of chosen and rejected, their
 * mean margin, and the share of pairs ranked right (TRL's accuracy).
 */
export function rewardObjective(adapter: Adapter): Objective {
  if (!(adapter instanceof ScoreHeadAdapter) || adapter.labels !== 1) {
    throw new Error("the reward objective needs the adapter wrapped with a one-output score head (ScoreHeadAdapter)");
  }
  return new RewardObjective();
}

const TRAINING: ForwardContext = { training: true, disableAdapters: false };
const EVALUATION: ForwardContext = { training: false, disableAdapters: false };

interface Rewards {
  chosen: Float32Array;
  rejected: Float32Array;
}

export class RewardObjective implements Objective {
  readonly type = "reward";

  check(batch: BatchData): void {
    pairsOf(batch);
  }

  trainStep(adapter: Adapter, microBatches: readonly BatchData[], options: StepOptions): ObjectiveStepResult {
    const variables = options.optimizer.parameters.map((parameter) => parameter.variable);
    const { loss, gradients, rewards, tokens } = this.lossAndGradients(adapter, microBatches, variables, options);
    const { lossValue, gradNorm } = applyGradients(loss, gradients, options);
    return { loss: lossValue, gradNorm, tokens, targetTokens: 0, preference: metrics(rewards) };
  }

  /** The step's mean loss over its pairs, and its gradients for `variables`, summed over the micro-batches. */
  lossAndGradients(
    adapter: Adapter,
    microBatches: readonly BatchData[],
    variables: readonly tf.Variable[],
    options: { gradientCheckpointing?: boolean } = {},
  ): { loss: tf.Scalar; gradients: tf.Tensor[]; rewards: Rewards[]; tokens: number } {
    const head = scoreHead(adapter);
    const pairs = microBatches.map(pairsOf);
    const pairCount = pairs.reduce((sum, pair) => sum + pair.chosen.rows, 0);
    const sums = new GradientSums(variables, " (a reward model does not use lm_head)");
    const rewards: Rewards[] = [];
    for (const pair of pairs) {
      const joined = joinRows(pair.chosen, pair.rejected);
      let scores: tf.Tensor1D | undefined;
      sums.add(() => {
        const rowScores = tf.reshape(head.scores(hiddenStates(adapter, joined, { ...TRAINING, gradientCheckpointing: options.gradientCheckpointing ?? false }), joined.attentionMask), [-1]) as tf.Tensor1D;
        scores = tf.keep(rowScores);
        return tf.div(tf.sum(pairLosses(rowScores)), pairCount) as tf.Scalar;
      });
      rewards.push(split(scores!, pair.chosen.rows));
      scores!.dispose();
    }
    const { loss, gradients } = sums.sums();
    const tokens = pairs.reduce((sum, pair) => sum + countTokens(pair.chosen) + countTokens(pair.rejected), 0);
    return { loss, gradients, rewards, tokens };
  }

  async evaluate(adapter: Adapter, batches: AsyncIterable<BatchData>): Promise<ObjectiveEvalResult | undefined> {
    const head = scoreHead(adapter);
    const rewards: Rewards[] = [];
    let tokens = 0;
    let lossSum = 0;
    for await (const batch of batches) {
      const pair = pairsOf(batch);
      const joined = joinRows(pair.chosen, pair.rejected);
      const scores = tf.tidy(() => tf.reshape(head.scores(hiddenStates(adapter, joined, EVALUATION), joined.attentionMask), [-1]) as tf.Tensor1D);
      lossSum += tf.tidy(() => tf.sum(pairLosses(scores)).dataSync()[0]!);
      rewards.push(split(scores, pair.chosen.rows));
      scores.dispose();
      tokens += countTokens(joined);
    }
    const count = rewards.reduce((sum, r) => sum + r.chosen.length, 0);
    if (count === 0) return undefined;
    return { loss: lossSum / count, tokens, preference: metrics(rewards) };
  }
}

/** −log σ(r_chosen − r_rejected) per pair, from the scores of [chosen rows; rejected rows]. */
function pairLosses(scores: tf.Tensor1D): tf.Tensor1D {
  const pairs = scores.shape[0] / 2;
  const [chosen, rejected] = tf.split(scores, [pairs, pairs]);
  // softplus(−x) = −log σ(x), from ops with registered gradients (see dpo.ts's logSigmoid).
  return tf.softplus(tf.neg(tf.sub(chosen!, rejected!))) as tf.Tensor1D;
}

function metrics(rewards: readonly Rewards[]): PreferenceMetrics {
  let count = 0;
  const sums = { chosen: 0, rejected: 0, right: 0 };
  for (const r of rewards) {
    for (let i = 0; i < r.chosen.length; i++) {
      sums.chosen += r.chosen[i]!;
      sums.rejected += r.rejected[i]!;
      sums.right += r.chosen[i]! > r.rejected[i]! ? 1 : 0;
      count++;
    }
  }
  const mean = (value: number) => (count > 0 ? value / count : 0);
  return {
    rewardsChosen: mean(sums.chosen),
    rewardsRejected: mean(sums.rejected),
    rewardsAccuracies: mean(sums.right),
    rewardsMargins: mean(sums.chosen - sums.rejected),
  };
}

function scoreHead(adapter: Adapter): ScoreHeadAdapter {
  if (!(adapter instanceof ScoreHeadAdapter)) throw new Error("the reward objective needs an adapter with a score head");
  return adapter;
}

function pairsOf(batch: BatchData): { chosen: TokenBatch; rejected: TokenBatch } {
  if (batch.kind !== "preference") {
    throw new Error(`objective reward trains on preference pairs, but the dataset gives ${batch.kind} batches; use dataset.format preference`);
  }
  return batch;
}

function split(scores: tf.Tensor1D, pairs: number): Rewards {
  const values = scores.dataSync() as Float32Array;
  return { chosen: values.slice(0, pairs), rejected: values.slice(pairs, 2 * pairs) };
}
