import type { BackendInfo } from "../backend/backend.ts";
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
  trainableParameters: number;
  /** Base model parameters plus the trainable ones. */
  totalParameters: number;
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
  batchSize: number;
  gradientAccumulation: number;
  sample?: TrainingMetrics["sample"];
}

export function trainingMetrics(state: TrainingState, context: MetricsContext): TrainingMetrics {
  const totalParameters = context.baseParameters + context.trainableParameters;
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
    trainableShare: totalParameters > 0 ? context.trainableParameters / totalParameters : 0,
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
    attempts: state.attemptStarts.length,
    resumedFromSteps: state.attemptStarts.slice(1),
    loss: state.steps,
    eval: state.evals,
    ...(context.sample ? { sample: context.sample } : {}),
  };
}
