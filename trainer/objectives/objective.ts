import type { ObjectStore } from "../../storage/object-store.ts";
import type { BatchData } from "../data/batching.ts";
import type { DataLoader } from "../data/loader.ts";
import type { Adapter } from "../methods/method.ts";
import type { StepOptions, StepResult } from "../train/step.ts";

/**
 * What training minimises, when it is not the next-token loss of the training loop's own
 * step (objective.type sft): DPO on preference pairs, for one. The loop hands each optimizer
 * step's micro-batches to trainStep and the eval set to evaluate; everything else (schedule,
 * checkpoints, progress) stays the loop's.
 */
export interface Objective {
  /** The FineTuneJob's objective.type. */
  readonly type: string;
  /** Throws a clear error when a batch is not of the kind this objective trains on; the loop checks every batch once before the first step. */
  check(batch: BatchData): void;
  /** One optimizer step over the micro-batches: loss, gradients, clipping and the update. */
  trainStep(adapter: Adapter, microBatches: readonly BatchData[], options: StepOptions): ObjectiveStepResult;
  /** The loss and metrics over the eval set; undefined when it holds nothing to evaluate. */
  evaluate(adapter: Adapter, batches: AsyncIterable<BatchData>): Promise<ObjectiveEvalResult | undefined>;
  /**
   * Called by the loop once the run has started or resumed, before the first evaluation and
   * step: what the objective computes from the untrained model (DPO's precomputed reference
   * log-probabilities with full fine-tuning) is computed and stored beside the checkpoints, or
   * read back on resume.
   */
  prepare?(context: ObjectivePreparation): Promise<void>;
}

export interface ObjectivePreparation {
  adapter: Adapter;
  data: DataLoader;
  batchSize: number;
  /** The run's checkpoint location: files that must survive a resume go in its folder. */
  checkpoints: { store: ObjectStore; folder: string; owner: string };
  fingerprint: string;
  /** True when the run continues from a checkpoint: the weights are trained ones. */
  resumed: boolean;
}

export interface ObjectiveStepResult extends StepResult {
  preference?: PreferenceMetrics;
  /** Classification: the share of the step's examples whose most likely class is their label. */
  accuracy?: number;
}

export interface ObjectiveEvalResult {
  loss: number;
  /** Input tokens evaluated (padding excluded). */
  tokens: number;
  preference?: PreferenceMetrics;
  /** Classification: the share of eval examples classified right. */
  accuracy?: number;
}

/**
 * The metrics TRL's DPOTrainer logs, as means over the pairs of a step (or of the eval set):
 * rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen and
 * logps/rejected. A reward is β · (log π(y|x) − log π_ref(y|x)), the implicit reward DPO
 * trains; logps are summed over the completion's tokens. For a reward model (objective reward)
 * a reward is the score head's output, and there are no logps.
 */
export interface PreferenceMetrics {
  rewardsChosen: number;
  rewardsRejected: number;
  /** Share of pairs whose chosen reward is above the rejected one. */
  rewardsAccuracies: number;
  /** Mean of chosen − rejected reward. */
  rewardsMargins: number;
  /** DPO only: a reward model has no log-probabilities. */
  logpsChosen?: number;
  logpsRejected?: number;
}
