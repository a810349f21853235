import type { BackendInfo } from "../backend/backend.ts";
import type { Adapter } from "../methods/method.ts";
import type { PreferenceMetrics } from "../objectives/objective.ts";
import type { EvalRecord, StepRecord, TrainingState } from "../train/loop.ts";

/** training_metrics.json: what a run did and how well, for people and dashboards. */
export interface TrainingMetrics {
  format: "kubetune-training-metrics/v1";
  method: string;
  baseModel: string;
  architecture: string;
  /** The tfjs backend the steps ran on: tensorflow (native TensorFlow), wasm or cpu. */
  backend: string;
  /** Where it computed (GPU name and memory, or CPU threads) and why this backend was chosen. */
  compute: BackendInfo;
  /** Parameters the optimizer updated: the adapter's, or every weight for full fine-tuning. */
  trainableParameters: number;
  /** The model's parameters with the adapter: the base model's plus the adapter's (the base model's alone for full fine-tuning). */
  totalParameters: number;
  /** trainableParameters / totalParameters: 1 for full fine-tuning. */
  trainableShare: number;
  steps: number;
  totalSteps: number;
  /** Epochs completed, with a fractional part. */
  epochs: number;
  batchSize: number;
  gradientAccumulation: number;
  /** Input tokens trained on (padding excluded). */
  tokens: number;
  /** Seconds spent in training steps, over every attempt. */
  durationSeconds: number;
  tokensPerSecond: number;
  /** Mean loss of the last step, and the last evaluation's loss and perplexity. */
  finalLoss: number | null;
  evalLoss: number | null;
  evalPerplexity: number | null;
  /** Objective dpo: TRL's rewards/* and logps/* of the last step and of the last evaluation (each step's are in `loss`). */
  preference?: PreferenceMetrics | null;
  evalPreference?: PreferenceMetrics | null;
  /** Classification: the last evaluation's accuracy (each evaluation's is in `eval`). */
  evalAccuracy?: number | null;
  /** Trainer processes that worked on the run, and the steps each resumed from. */
  attempts: number;
  resumedFromSteps: number[];
  /** The loss curve: one entry per optimizer step. */
  loss: StepRecord[];
  eval: EvalRecord[];
  /** A greedy continuation of a fixed prompt by the base model and by the trained adapter. */
  sample?: { prompt: string; base: string; adapter: string };
}

export interface MetricsContext {
  method: string;
  baseModel: string;
  architecture: string;
  backend: BackendInfo;
  trainableParameters: number;
  baseParameters: number;
  /** The method trains the base weights themselves (full fine-tuning): its parameters are not added to the base model's. */
  trainsBaseWeights?: boolean;
  batchSize: number;
  gradientAccumulation: number;
  sample?: TrainingMetrics["sample"];
}

/** Trainable parameters, the total with them, and the trainable share, for a method's adapter on its model. */
export function parameterCounts(adapter: Adapter): { trainableParameters: number; totalParameters: number; trainableShare: number } {
  return shareOf(adapter.trainableParameterCount(), adapter.model.parameterCount(), adapter.trainsBaseWeights ?? false);
}

function shareOf(trainable: number, base: number, trainsBaseWeights: boolean): { trainableParameters: number; totalParameters: number; trainableShare: number } {
  const total = trainsBaseWeights ? base : base + trainable;
  return { trainableParameters: trainable, totalParameters: total, trainableShare: total > 0 ? trainable / total : 0 };
}

export function trainingMetrics(state: TrainingState, context: MetricsContext): TrainingMetrics {
  const { totalParameters, trainableShare } = shareOf(context.trainableParameters, context.baseParameters, context.trainsBaseWeights ?? false);
  const lastEval = state.evals.at(-1);
  return {
    format: "kubetune-training-metrics/v1",
    method: context.method,
    baseModel: context.baseModel,
    architecture: context.architecture,
    backend: context.backend.name,
    compute: context.backend,
    trainableParameters: context.trainableParameters,
    totalParameters,
    trainableShare,
    steps: state.step,
    totalSteps: state.totalSteps,
    epochs: state.batchesPerEpoch > 0 ? state.microBatches / state.batchesPerEpoch : 0,
    batchSize: context.batchSize,
    gradientAccumulation: context.gradientAccumulation,
    tokens: state.tokens,
    durationSeconds: state.trainingSeconds,
    tokensPerSecond: state.trainingSeconds > 0 ? state.tokens / state.trainingSeconds : 0,
    finalLoss: state.steps.at(-1)?.loss ?? null,
    evalLoss: lastEval?.loss ?? null,
    evalPerplexity: lastEval?.perplexity ?? null,
    ...(state.steps.some((step) => step.accuracy !== undefined) ? { evalAccuracy: lastEval?.accuracy ?? null } : {}),
    ...(state.steps.some((step) => step.preference) ? { preference: state.steps.at(-1)?.preference ?? null, evalPreference: lastEval?.preference ?? null } : {}),
    attempts: state.attemptStarts.length,
    resumedFromSteps: state.attemptStarts.slice(1),
    loss: state.steps,
    eval: state.evals,
    ...(context.sample ? { sample: context.sample } : {}),
  };
}
