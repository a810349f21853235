import type { BackendInfo } from "../backend/backend.ts";
import type { PreferenceMetrics } from "../objectives/objective.ts";

/**
 * What the training loop reports while it runs. `kubetune run` draws a progress bar or prints
 * one JSON line per event; `kubetune train` prints JSON lines, and the operator's progress
 * channel forwards "step", "eval" and "checkpoint" events into the job's status.progress and
 * status.lastCheckpoint.
 */

/** Where training stands after an optimizer step; the shape of the job's status.progress. */
export interface TrainingProgress {
  /** Optimizer steps completed. */
  step: number;
  totalSteps: number;
  /** Epochs completed, with a fractional part. */
  epoch: number;
  /** Mean next-token loss of the latest step. */
  loss: number;
  /** Loss on the eval set at the latest evaluation, if there has been one. */
  evalLoss?: number;
  learningRate: number;
  /** Input tokens (padding excluded) per second of training, over the last few steps. */
  tokensPerSecond: number;
  /** Estimated seconds until the last step. */
  etaSeconds: number;
  /** Objectives dpo and reward: the step's rewards (and DPO's log-probabilities), as TRL logs them. */
  preference?: PreferenceMetrics;
  /** Classification: accuracy on the eval set at the latest evaluation. */
  evalAccuracy?: number;
}

export type ProgressEvent =
  | ({ event: "backend" } & BackendInfo)
  | {
      event: "start";
      totalSteps: number;
      /** The step training continues from: 0, or a checkpoint's step. */
      step: number;
      /** The checkpoint resumed from, if any. */
      resumedFrom?: string;
      backend: string;
      /** Parameters the optimizer updates: the method's, or every weight for full fine-tuning. */
      trainableParameters: number;
      /** The base model's parameters plus the method's (the base model's alone for full fine-tuning). */
      totalParameters: number;
      /** trainableParameters / totalParameters. */
      trainableShare: number;
    }
  | ({ event: "step"; gradNorm: number } & TrainingProgress)
  | {
      event: "eval";
      step: number;
      evalLoss: number;
      /** exp(evalLoss) for the next-token loss; null for objective dpo, whose loss is no cross-entropy. */
      evalPerplexity: number | null;
      evalTokens: number;
      /** Objective dpo: the eval set's rewards and log-probabilities. */
      evalPreference?: PreferenceMetrics;
      /** Classification: the share of eval examples classified right. */
      evalAccuracy?: number;
    }
  | { event: "checkpoint"; step: number; uri: string; reason: CheckpointReason }
  | { event: "stopped"; step: number; totalSteps: number; checkpoint: string; signal: string }
  | { event: "done"; step: number; totalSteps: number; outputUri: string; files: string[]; durationSeconds: number }
  /** Something the user should know that does not stop training; `reason` is CamelCase, fit for a Kubernetes Event. */
  | { event: "warning"; reason: WarningReason; message: string };

/**
 * CheckpointUnreadable: the newest checkpoint is corrupt or incomplete and an older one is used.
 * OtherCheckpointsIgnored: the checkpoint folder holds only other jobs' checkpoints (or this
 * job's with other settings or data), so training starts at step 0.
 * StorageUnavailable: S3 did not answer (a restart, a failover); the operation is retried for a
 * few minutes before the attempt fails.
 */
export type WarningReason = "CheckpointUnreadable" | "OtherCheckpointsIgnored" | "StorageUnavailable";

/** Why a checkpoint was saved: on schedule, because the trainer was asked to stop, or after the last step. */
export type CheckpointReason = "interval" | "stop" | "final";

export type ProgressListener = (event: ProgressEvent) => void;

/**
 * Throughput and time left. Tokens per second come from the last `window` steps' own time;
 * the ETA divides this attempt's wall time (evaluations and checkpoints included) by the steps
 * it took, so it also covers that overhead.
 */
export class ProgressClock {
  private readonly recent: { tokens: number; seconds: number }[] = [];
  private readonly startedAt: number;
  private readonly startStep: number;

  constructor(
    startStep: number,
    private readonly now: () => number = () => performance.now() / 1000,
    private readonly window = 20,
  ) {
    this.startedAt = now();
    this.startStep = startStep;
  }

  /** Records one step's input tokens and its own duration in seconds. */
  recordStep(tokens: number, seconds: number): void {
    this.recent.push({ tokens, seconds });
    if (this.recent.length > this.window) this.recent.shift();
  }

  tokensPerSecond(): number {
    const tokens = this.recent.reduce((sum, entry) => sum + entry.tokens, 0);
    const seconds = this.recent.reduce((sum, entry) => sum + entry.seconds, 0);
    return seconds > 0 ? tokens / seconds : 0;
  }

  etaSeconds(step: number, totalSteps: number): number {
    const done = step - this.startStep;
    if (done <= 0) return 0;
    return Math.max(0, Math.round(((this.now() - this.startedAt) / done) * (totalSteps - step)));
  }
}
