import type { ObjectStore } from "../../storage/object-store.ts";
import { loadLatestCheckpoint, pruneCheckpoints, saveCheckpoint, type SavedTensor } from "../checkpoint/checkpoint.ts";
import type { TokenBatch } from "../data/batching.ts";
import type { Batch, DataLoader, DataPosition } from "../data/loader.ts";
import type { Adapter } from "../methods/method.ts";
import type { Objective, ObjectiveStepResult, PreferenceMetrics } from "../objectives/objective.ts";
import { AdamW, type Parameter } from "../optim/adamw.ts";
import { parameterCounts } from "../output/metrics.ts";
import { learningRateAt, type SchedulerType } from "../optim/schedule.ts";
import type { Rng } from "../random.ts";
import { ProgressClock, type CheckpointReason, type ProgressListener } from "./progress.ts";
import { evalBatchLoss, trainStep } from "./step.ts";

/**
 * The training loop, top to bottom: resume or start, then for each optimizer step take
 * gradientAccumulation micro-batches, step, report, evaluate and checkpoint on schedule, and stop
 * cleanly when asked. Everything that decides the numbers (adapter weights, AdamW moments, the
 * step, the data position, the dropout generator) is in the checkpoint, so a resumed run
 * computes bit for bit what an uninterrupted one would have.
 */

/** The optimisation settings, as plain data (the FineTuneJob's hyperparameters and checkpoint blocks). */
export interface TrainingConfig {
  /** Passes over the training data; exclusive with maxSteps. */
  epochs?: number;
  /** Optimizer steps to take instead of epochs. */
  maxSteps?: number;
  batchSize: number;
  gradientAccumulation: number;
  learningRate: number;
  scheduler: SchedulerType;
  /** Exclusive with warmupRatio; 0 when neither is set. */
  warmupSteps?: number;
  warmupRatio?: number;
  weightDecay: number;
  /** 0 turns clipping off. */
  maxGradNorm: number;
  /** Steps between evaluations; at the end of each epoch when unset (if there is eval data). */
  evalEverySteps?: number;
  checkpointEverySteps: number;
  checkpointKeep: number;
  /** Recompute each transformer block in the backward pass: less memory for one more forward pass. Default false. */
  gradientCheckpointing?: boolean;
  /** AdamW's moment decay rates and denominator term; Hugging Face's defaults 0.9, 0.999 and 1e-8 when unset. */
  adamBeta1?: number;
  adamBeta2?: number;
  adamEpsilon?: number;
}

/** Where checkpoints go: a folder (one path segment) of a store, and the job's identity there (checkpoint.ts). */
export interface CheckpointLocation {
  store: ObjectStore;
  folder: string;
  owner: string;
}

export interface TrainingRun {
  adapter: Adapter;
  /** The generator the adapter draws dropout masks from (InjectContext.rng); checkpointed. */
  rng: Rng;
  data: DataLoader;
  config: TrainingConfig;
  checkpoints: CheckpointLocation;
  /**
   * A hash of every setting that decides the numbers; a checkpoint written with other settings
   * is refused rather than silently continued.
   */
  fingerprint: string;
  /** The tfjs backend in use, for the start event. */
  backend: string;
  /** What training minimises when it is not the next-token loss (sft): DPO, say. */
  objective?: Objective;
  /**
   * For a run that is one part of a longer schedule (RLAIF's rounds): the steps taken before it
   * and the whole schedule's length. Its step s then gets the learning rate of step offset + s
   * of that schedule, warmupRatio counting over totalSteps. Unset: the schedule is this run's.
   */
  schedule?: { offset: number; totalSteps: number };
  onProgress?: ProgressListener;
  /** When aborted, the loop finishes the current step, saves a checkpoint and returns "stopped". */
  signal?: AbortSignal;
  /** Seconds on a monotonic clock; tests may replace it. */
  now?: () => number;
}

export interface StepRecord {
  step: number;
  loss: number;
  learningRate: number;
  gradNorm: number;
  tokens: number;
  /** The step's preference metrics (TRL's rewards/* and logps/*), for objectives dpo and reward. */
  preference?: PreferenceMetrics;
  /** Classification: the share of the step's examples classified right. */
  accuracy?: number;
}

export interface EvalRecord {
  step: number;
  loss: number;
  /** exp(loss) for the next-token loss; null for objectives whose loss is no cross-entropy (dpo). */
  perplexity: number | null;
  tokens: number;
  preference?: PreferenceMetrics;
  accuracy?: number;
}

/** What a checkpoint's state.json holds besides the tensors. */
export interface TrainingState {
  fingerprint: string;
  step: number;
  totalSteps: number;
  /** Micro-batches in one epoch, counted once before the first step. */
  batchesPerEpoch: number;
  /** Micro-batches trained on so far. */
  microBatches: number;
  /** The data position after the last micro-batch trained on. */
  position: DataPosition | undefined;
  /** The adapter generator's state (dropout masks). */
  rng: number[];
  /** Input tokens trained on so far. */
  tokens: number;
  /** Seconds spent in training steps, over all attempts. */
  trainingSeconds: number;
  /** The steps each attempt started from, in order: [0] for one uninterrupted run. */
  attemptStarts: number[];
  steps: StepRecord[];
  evals: EvalRecord[];
}

export type TrainingOutcome =
  | { status: "completed"; state: TrainingState; checkpoint: string | undefined }
  | { status: "stopped"; state: TrainingState; checkpoint: string };

export async function train(run: TrainingRun): Promise<TrainingOutcome> {
  const { adapter, data, config, checkpoints } = run;
  const now = run.now ?? (() => performance.now() / 1000);

  // The optimizer sees the adapter's variables only; the base model stays frozen.
  const parameters: Parameter[] = [...adapter.trainableVariables()].map(([name, variable]) => ({ name, variable, decay: decays(name) }));
  const optimizer = new AdamW(parameters, { weightDecay: config.weightDecay, beta1: config.adamBeta1, beta2: config.adamBeta2, epsilon: config.adamEpsilon });
  try {
    const { state, resumedFrom } = await startOrResume(run, optimizer);
    // Before the first evaluation and step: what the objective needs from the model as it was at step 0.
    await run.objective?.prepare?.({ adapter, data, batchSize: config.batchSize, checkpoints, fingerprint: run.fingerprint, resumed: resumedFrom !== undefined });
    const scheduleSteps = run.schedule?.totalSteps ?? state.totalSteps;
    const scheduleOffset = run.schedule?.offset ?? 0;
    const schedule = {
      type: config.scheduler,
      learningRate: config.learningRate,
      warmupSteps: config.warmupSteps ?? Math.ceil((config.warmupRatio ?? 0) * scheduleSteps),
      totalSteps: scheduleSteps,
    };
    run.onProgress?.({
      event: "start",
      totalSteps: state.totalSteps,
      step: state.step,
      ...(resumedFrom ? { resumedFrom } : {}),
      backend: run.backend,
      ...parameterCounts(adapter),
    });

    const clock = new ProgressClock(state.step, now);
    const epochOf = (microBatches: number) => microBatches / state.batchesPerEpoch;
    const batches = new Lookahead(data.trainBatches(config.batchSize, { from: state.position, epochs: config.epochs }));
    let lastCheckpoint = resumedFrom;
    let checkpointedStep = state.step;
    const checkpoint = async (reason: CheckpointReason): Promise<string> => {
      lastCheckpoint = await saveTrainingCheckpoint(checkpoints, adapter, optimizer, state);
      checkpointedStep = state.step;
      await pruneCheckpoints(checkpoints.store, { ...checkpoints, keep: config.checkpointKeep, newest: state.step });
      run.onProgress?.({ event: "checkpoint", step: state.step, uri: lastCheckpoint, reason });
      return lastCheckpoint;
    };
    const evaluateNow = async (): Promise<void> => {
      const result: Omit<EvalRecord, "step"> | undefined = run.objective ? await evaluateObjective(run.objective, adapter, data, config.batchSize) : await evaluate(adapter, data, config.batchSize);
      if (!result) return;
      state.evals.push({ step: state.step, ...result });
      run.onProgress?.({
        event: "eval",
        step: state.step,
        evalLoss: result.loss,
        evalPerplexity: result.perplexity,
        evalTokens: result.tokens,
        ...(result.preference ? { evalPreference: result.preference } : {}),
        ...(result.accuracy !== undefined ? { evalAccuracy: result.accuracy } : {}),
      });
    };

    // The base model's eval loss, the "before" of the loss curve.
    if (state.step === 0 && state.evals.length === 0) await evaluateNow();
    // The next step's batches are asked for before this step computes, so that reading them (from
    // S3, say) overlaps the step; the step itself holds the thread, so encoding does not overlap.
    // The checkpointed data position stays that of the step's own batches.
    const prefetch = (): Promise<Batch[] | undefined> => {
      const upcoming = nextStepBatches(batches, config.gradientAccumulation);
      // A run that stops early never awaits it; its error, if any, is not a crash then.
      upcoming.catch(() => undefined);
      return upcoming;
    };
    let upcoming = prefetch();
    try {
      while (state.step < state.totalSteps) {
        const micro = await upcoming;
        if (!micro) break;
        upcoming = state.step + 1 < state.totalSteps ? prefetch() : Promise.resolve(undefined);
        const learningRate = learningRateAt(scheduleOffset + state.step, schedule);
        const started = now();
        const stepOptions = { optimizer, learningRate, maxGradNorm: config.maxGradNorm, gradientCheckpointing: config.gradientCheckpointing ?? false };
        const result: ObjectiveStepResult = run.objective ? run.objective.trainStep(adapter, micro, stepOptions) : trainStep(adapter, micro.map(lmTokens), stepOptions);
        const { preference, accuracy } = result;
        const seconds = now() - started;

        const epochBefore = Math.floor(epochOf(state.microBatches));
        state.step += 1;
        state.microBatches += micro.length;
        state.position = micro.at(-1)!.position;
        state.rng = run.rng.state();
        state.tokens += result.tokens;
        state.trainingSeconds += seconds;
        state.steps.push({ step: state.step, loss: result.loss, learningRate, gradNorm: result.gradNorm, tokens: result.tokens, ...(preference ? { preference } : {}), ...(accuracy !== undefined ? { accuracy } : {}) });
        clock.recordStep(result.tokens, seconds);
        run.onProgress?.({
          event: "step",
          step: state.step,
          totalSteps: state.totalSteps,
          epoch: epochOf(state.microBatches),
          loss: result.loss,
          ...(state.evals.length > 0 ? { evalLoss: state.evals.at(-1)!.loss } : {}),
          ...(state.evals.at(-1)?.accuracy !== undefined ? { evalAccuracy: state.evals.at(-1)!.accuracy } : {}),
          learningRate,
          gradNorm: result.gradNorm,
          tokensPerSecond: clock.tokensPerSecond(),
          etaSeconds: clock.etaSeconds(state.step, state.totalSteps),
          ...(preference ? { preference } : {}),
        });

        const endOfEpoch = Math.floor(epochOf(state.microBatches)) > epochBefore;
        if (config.evalEverySteps ? state.step % config.evalEverySteps === 0 : endOfEpoch) await evaluateNow();
        if (run.signal?.aborted) {
          return { status: "stopped", state, checkpoint: await checkpoint("stop") };
        }
        if (state.step % config.checkpointEverySteps === 0 && state.step < state.totalSteps) await checkpoint("interval");
      }
    } finally {
      await batches.close();
    }

    if (data.hasEval && state.evals.at(-1)?.step !== state.step) await evaluateNow();
    // The last checkpoint lets a run that dies while writing its outputs redo only that.
    if (checkpointedStep !== state.step || !lastCheckpoint) await checkpoint("final");
    return { status: "completed", state, checkpoint: lastCheckpoint };
  } finally {
    optimizer.dispose();
  }
}

/**
 * Weight decay applies to weight matrices, not to biases and norm scales (as in Hugging Face's
 * Trainer): names such as "...bias", "model.norm.weight", "...input_layernorm.weight",
 * "...q_norm.weight" (full fine-tuning's Hugging Face names) or GPT-2's "ln_1".
 */
function decays(name: string): boolean {
  return !/(^|[._])(bias|\w*norm|ln_\w*)($|[._])/.test(name);
}

/** The newest checkpoint restored into the adapter and optimizer, or a fresh state. */
async function startOrResume(run: TrainingRun, optimizer: AdamW): Promise<{ state: TrainingState; resumedFrom?: string }> {
  const { adapter, config, checkpoints } = run;
  const found = await loadLatestCheckpoint<TrainingState>(checkpoints.store, checkpoints);
  const uriOf = (prefix: string) => `${checkpoints.store.uri.replace(/\/+$/, "")}/${prefix}`;
  for (const { prefix, problem } of found.unreadable) {
    const instead = found.checkpoint ? `resuming from ${uriOf(found.checkpoint.prefix)} instead` : "no older checkpoint is readable: starting at step 0";
    run.onProgress?.({ event: "warning", reason: "CheckpointUnreadable", message: `checkpoint ${uriOf(prefix)} cannot be read (${problem}); ${instead}` });
  }
  if (!found.checkpoint && found.foreign.length > 0) {
    run.onProgress?.({
      event: "warning",
      reason: "OtherCheckpointsIgnored",
      message:
        `${uriOf(checkpoints.folder)} holds ${found.foreign.length} checkpoint(s) of other jobs, or of this job with other settings, model or data ` +
        `(e.g. ${found.foreign.at(-1)!.slice(checkpoints.folder.length + 1)}); they are left alone and training starts at step 0`,
    });
  }
  const saved = found.checkpoint;
  if (saved) {
    const where = uriOf(saved.prefix);
    if (saved.state.fingerprint !== run.fingerprint) {
      throw new CheckpointMismatchError(
        `${where}: this checkpoint was written by a job with other settings (model, method, dataset or hyperparameters); ` +
          "resume with the same spec, or point checkpoint.uri (or output.uri) somewhere new to start over",
      );
    }
    restoreTensors(saved.tensors, adapter, optimizer, saved.step, where);
    run.rng.setState(saved.state.rng);
    const state = { ...saved.state, attemptStarts: [...saved.state.attemptStarts, saved.step] };
    return { state, resumedFrom: where };
  }
  const batchesPerEpoch = await countBatches(run.data, config.batchSize, run.objective);
  const stepsPerEpoch = Math.ceil(batchesPerEpoch / config.gradientAccumulation);
  return {
    state: {
      fingerprint: run.fingerprint,
      step: 0,
      totalSteps: config.maxSteps ?? (config.epochs ?? 1) * stepsPerEpoch,
      batchesPerEpoch,
      microBatches: 0,
      position: undefined,
      rng: run.rng.state(),
      tokens: 0,
      trainingSeconds: 0,
      attemptStarts: [0],
      steps: [],
      evals: [],
    },
  };
}

/** A checkpoint that does not belong to this job's settings. */
export class CheckpointMismatchError extends Error {
  override name = "CheckpointMismatchError";
}

/**
 * Micro-batches in one epoch: one pass over the training data. The count does not depend on
 * the order (unpacked, one row per example; packed, the token total decides), so one pass
 * serves every epoch. It also reads every line once before training, so a bad line deep in the
 * data stops the job before any GPU time is spent on it.
 */
async function countBatches(data: DataLoader, batchSize: number, objective: Objective | undefined): Promise<number> {
  let count = 0;
  for await (const batch of data.trainBatches(batchSize, { epochs: 1 })) {
    if (objective) objective.check(batch);
    else lmTokens(batch);
    count++;
  }
  return count;
}

function lmTokens(batch: Batch): TokenBatch {
  if (batch.kind !== "lm") {
    throw new Error(`the ${batch.kind} batches of this dataset need an objective this trainer does not implement yet; use format text, instruction or chat`);
  }
  return batch.tokens;
}

/** The micro-batches of the next optimizer step: up to `count`, all from one epoch. */
async function nextStepBatches(batches: Lookahead<Batch>, count: number): Promise<Batch[] | undefined> {
  const first = await batches.next();
  if (!first) return undefined;
  const step = [first];
  while (step.length < count) {
    const next = await batches.peek();
    if (!next || next.epoch !== first.epoch) break;
    step.push((await batches.next())!);
  }
  return step;
}

/** The objective's loss and metrics over the eval set, in the shape of an eval record (no perplexity). */
async function evaluateObjective(objective: Objective, adapter: Adapter, data: DataLoader, batchSize: number): Promise<Omit<EvalRecord, "step"> | undefined> {
  if (!data.hasEval) return undefined;
  const result = await objective.evaluate(adapter, data.evalBatches(batchSize));
  return (
    result && {
      loss: result.loss,
      perplexity: null,
      tokens: result.tokens,
      ...(result.preference ? { preference: result.preference } : {}),
      ...(result.accuracy !== undefined ? { accuracy: result.accuracy } : {}),
    }
  );
}

/** Mean next-token loss over every target token of the eval set, and its perplexity. */
export async function evaluate(adapter: Adapter, data: DataLoader, batchSize: number): Promise<{ loss: number; perplexity: number; tokens: number } | undefined> {
  if (!data.hasEval) return undefined;
  let lossSum = 0;
  let tokens = 0;
  for await (const batch of data.evalBatches(batchSize)) {
    if (batch.kind !== "lm") continue;
    const result = evalBatchLoss(adapter, batch.tokens);
    lossSum += result.lossSum;
    tokens += result.targetTokens;
  }
  if (tokens === 0) return undefined;
  const loss = lossSum / tokens;
  return { loss, perplexity: Math.exp(loss), tokens };
}

async function saveTrainingCheckpoint(location: CheckpointLocation, adapter: Adapter, optimizer: AdamW, state: TrainingState): Promise<string> {
  const tensors: Record<string, SavedTensor> = {};
  for (const [name, tensor] of adapter.saveState()) tensors[`adapter/${name}`] = tensor;
  const moments = optimizer.saveState();
  optimizer.parameters.forEach((parameter, index) => {
    const shape = [...parameter.variable.shape];
    tensors[`optimizer/${parameter.name}/m`] = { shape, data: Float32Array.from(moments[2 * index]!) };
    tensors[`optimizer/${parameter.name}/v`] = { shape, data: Float32Array.from(moments[2 * index + 1]!) };
  });
  const prefix = await saveCheckpoint(location.store, { step: state.step, tensors, state }, location);
  return `${location.store.uri.replace(/\/+$/, "")}/${prefix}`;
}

function restoreTensors(tensors: Record<string, SavedTensor>, adapter: Adapter, optimizer: AdamW, step: number, where: string): void {
  const adapterState = new Map<string, SavedTensor>();
  for (const [name, tensor] of Object.entries(tensors)) {
    if (name.startsWith("adapter/")) adapterState.set(name.slice("adapter/".length), tensor);
  }
  adapter.loadState(adapterState);
  const moments = optimizer.parameters.flatMap((parameter) =>
    (["m", "v"] as const).map((moment) => {
      const saved = tensors[`optimizer/${parameter.name}/${moment}`];
      if (!saved || saved.data.length !== parameter.variable.size) {
        throw new CheckpointMismatchError(`${where}: optimizer state for "${parameter.name}" is missing or has the wrong size`);
      }
      return saved.data;
    }),
  );
  optimizer.loadState(step, moments);
}

/** An async iterator with one item of lookahead, to see whether the next batch starts a new epoch. */
class Lookahead<T> {
  private buffered: IteratorResult<T> | undefined;

  constructor(private readonly iterator: AsyncGenerator<T>) {}

  async peek(): Promise<T | undefined> {
    this.buffered ??= await this.iterator.next();
    return this.buffered.done ? undefined : this.buffered.value;
  }

  async next(): Promise<T | undefined> {
    const item = await this.peek();
    this.buffered = undefined;
    return item;
  }

  /** Closes the underlying generator (and the file it reads). */
  async close(): Promise<void> {
    await this.iterator.return(undefined);
  }
}
