/** Learning-rate schedules as Hugging Face transformers defines them (get_scheduler). */
export type SchedulerType = "cosine" | "linear" | "constant";

export interface ScheduleOptions {
  type: SchedulerType;
  /** Peak learning rate, reached at the end of warmup. */
  learningRate: number;
  warmupSteps: number;
  totalSteps: number;
}

/**
 * The learning rate for optimizer step `step` (0-based): linear warmup from 0 over warmupSteps,
 * then constant, linear decay to 0, or a half cosine to 0 at totalSteps.
 */
export function learningRateAt(step: number, options: ScheduleOptions): number {
  const { type, learningRate, warmupSteps, totalSteps } = options;
  if (step < warmupSteps) return (learningRate * step) / Math.max(1, warmupSteps);
  if (type === "constant") return learningRate;
  const progress = (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
  if (type === "linear") return learningRate * Math.max(0, 1 - progress);
  return learningRate * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress))));
}
