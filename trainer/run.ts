import type { DefaultedFineTuneJobSpec } from "../api/index.ts";
import { openStore } from "../storage/open-store.ts";
import { StorageError, type ObjectStore } from "../storage/object-store.ts";
import type { ManifestEntry } from "../storage/publish.ts";
import { BackendError, selectBackend } from "./backend/backend.ts";
import { DatasetError } from "./data/bad-lines.ts";
import { DataLoader } from "./data/loader.ts";
import { MethodOptionsError, type Adapter } from "./methods/method.ts";
import { getMethod, methodTypes } from "./methods/registry.ts";
import { ModelConfigError } from "./model/config.ts";
import { loadModel, ModelLoadError } from "./model/loader.ts";
import type { CausalLM } from "./model/model.ts";
import { trainingMetrics, type TrainingMetrics } from "./output/metrics.ts";
import { adapterFiles, loadableBy, MERGED_FOLDER, mergedModelFiles, reportFiles, writeOutputs } from "./output/output.ts";
import { preflight, type PreflightReason } from "./preflight/preflight.ts";
import { Rng } from "./random.ts";
import { SafetensorsError } from "./safetensors/safetensors.ts";
import { loadTokenizer, TokenizerError, type Tokenizer } from "./tokenizer/tokenizer.ts";
import { CheckpointMismatchError, train } from "./train/loop.ts";
import { planJob, PlanError, type JobPlan } from "./train/plan.ts";
import type { ProgressListener } from "./train/progress.ts";
import { promptOf, sampleBeforeAfter } from "./train/sample.ts";

/**
 * Runs one FineTuneJob from its defaulted spec: the entry point of `kubetune run` (on this
 * machine) and `kubetune train` (in the trainer pod). It opens the stores, checks the inputs,
 * loads the model and tokenizer, injects the method, trains (resuming from the newest
 * checkpoint), and writes the outputs. Everything it reports goes through onProgress.
 */

export interface RunJobOptions {
  /** Resolves relative local paths in the spec (the manifest's folder). */
  baseDir?: string;
  onProgress?: ProgressListener;
  /** Abort to stop after the current step with a checkpoint (SIGTERM, suspend, Ctrl-C). */
  signal?: AbortSignal;
  /** Greedy-decode a prompt with the base model and with the adapter after training (default true). */
  sample?: boolean;
  /** The sample's prompt; default the prompt of the first eval (else training) example. */
  samplePrompt?: string;
}

/**
 * Exit codes of `kubetune run` and `kubetune train`. "stopped" (EX_TEMPFAIL) means the trainer
 * was asked to stop (SIGTERM: suspend, preemption, Ctrl-C), saved a checkpoint and exited
 * cleanly: run it again to resume. Anything else non-zero is a failure.
 */
export { EXIT_CODE } from "../api/index.ts";

export type RunJobResult =
  | { status: "completed"; outputs: JobOutputs; metrics: TrainingMetrics }
  | { status: "stopped"; step: number; totalSteps: number; checkpoint: string };

/** What a completed job wrote, in the shape of the job's status.outputs. */
export interface JobOutputs {
  uri: string;
  mergedUri?: string;
  files: ManifestEntry[];
  trainableParameters: number;
  totalParameters: number;
  trainableShare: number;
  loadableBy: string[];
}

/** Why a job failed, as the job's condition reason; the operator fails the job for good on all but TrainerFailed and StorageUnavailable. */
export type FailureReason = PreflightReason | "InvalidSpec" | "TrainerFailed";

/** A failure a user can act on: the reason and one line (or a few) naming the file or field and what is wrong. */
export class JobError extends Error {
  constructor(
    readonly reason: FailureReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "JobError";
  }
}

export async function runFineTuneJob(spec: DefaultedFineTuneJobSpec, options: RunJobOptions = {}): Promise<RunJobResult> {
  const plan = asJobError(() => planJob(spec, { baseDir: options.baseDir }));
  if (!methodTypes().includes(plan.method.type)) {
    throw new JobError("InvalidSpec", `spec.method.type: "${plan.method.type}" is not implemented by this trainer yet; implemented: ${methodTypes().join(", ")}`);
  }
  const open = (uri: string) => openStore(uri, plan.storage);
  const modelStore = open(plan.model.uri);
  const datasetStore = open(plan.dataset.storeUri);

  // The cheap checks first, so that a wrong path or a bad first line is reported before the weights load.
  const problems = await rethrow(
    preflight({
      modelStore,
      modelPrefix: "",
      ...(plan.model.architecture ? { architecture: plan.model.architecture } : {}),
      datasetStore,
      datasetKeys: [plan.dataset.train, ...(plan.dataset.eval ? [plan.dataset.eval] : [])],
      dataset: plan.dataset.options,
    }),
    modelStore,
  );
  if (problems.length > 0) throw new JobError(problems[0]!.reason, problems.map((problem) => problem.message).join("\n"));

  const backend = await rethrow(selectBackend(plan.backend), modelStore);
  const model = await rethrow(loadModel(modelStore, plan.model.architecture ? { architecture: plan.model.architecture } : {}), modelStore);
  let adapter: Adapter | undefined;
  try {
    const tokenizer = await rethrow(loadTokenizer(modelStore, ""), modelStore);
    checkCompatible(plan, model, tokenizer, modelStore);
    const rng = Rng.fromSeed(plan.seed);
    adapter = asJobError(() =>
      getMethod(plan.method.type).inject(model, plan.method.options, { rng, baseModelNameOrPath: spec.baseModel.uri, optionsPath: plan.method.optionsPath }),
    );
    const data = await rethrow(datasetLoader(plan, datasetStore, tokenizer), modelStore);
    const outcome = await rethrow(
      train({
        adapter,
        rng,
        data,
        config: plan.training,
        checkpoints: { store: open(plan.checkpoint.storeUri), folder: plan.checkpoint.folder },
        fingerprint: plan.fingerprint,
        backend,
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      }),
      modelStore,
    );
    if (outcome.status === "stopped") {
      return { status: "stopped", step: outcome.state.step, totalSteps: outcome.state.totalSteps, checkpoint: outcome.checkpoint };
    }

    const sample = options.sample === false ? undefined : await rethrow(samplePrompt(options.samplePrompt, data, tokenizer), modelStore);
    const metrics = trainingMetrics(outcome.state, {
      method: plan.method.type,
      baseModel: spec.baseModel.uri,
      architecture: model.config.architecture,
      backend,
      trainableParameters: adapter.trainableParameterCount(),
      baseParameters: model.parameterCount(),
      batchSize: plan.training.batchSize,
      gradientAccumulation: plan.training.gradientAccumulation,
      ...(sample ? { sample: sampleBeforeAfter(adapter, tokenizer, sample, { maxLength: plan.dataset.options.maxSeqLength }) } : {}),
    });
    const outputStore = open(plan.output.uri);
    const files = {
      ...adapterFiles(adapter),
      ...reportFiles(metrics, `${plan.method.type} on ${spec.baseModel.uri}`),
      ...(plan.output.mergeIntoBase ? await mergedModelFiles(adapter, modelStore) : {}),
    };
    const manifest = await writeOutputs(outputStore, files, { step: outcome.state.step, fingerprint: plan.fingerprint });
    options.onProgress?.({
      event: "done",
      step: outcome.state.step,
      totalSteps: outcome.state.totalSteps,
      outputUri: outputStore.uri,
      files: manifest.files.map((file) => file.name),
      durationSeconds: metrics.durationSeconds,
    });
    const outputs: JobOutputs = {
      uri: outputStore.uri,
      ...(plan.output.mergeIntoBase ? { mergedUri: `${outputStore.uri.replace(/\/+$/, "")}/${MERGED_FOLDER}` } : {}),
      files: manifest.files,
      trainableParameters: metrics.trainableParameters,
      totalParameters: metrics.totalParameters,
      trainableShare: metrics.trainableShare,
      loadableBy: loadableBy(adapter.adapterConfig(), plan.output.mergeIntoBase),
    };
    return { status: "completed", outputs, metrics };
  } finally {
    adapter?.remove();
    model.dispose();
  }
}

async function datasetLoader(plan: JobPlan, store: ObjectStore, tokenizer: Tokenizer): Promise<DataLoader> {
  return new DataLoader({ store, train: [plan.dataset.train], ...(plan.dataset.eval ? { eval: [plan.dataset.eval] } : {}) }, plan.dataset.options, tokenizer);
}

/** Token ids the model cannot embed, or positions it cannot place, fail here rather than as NaN later. */
function checkCompatible(plan: JobPlan, model: CausalLM, tokenizer: Tokenizer, modelStore: ObjectStore): void {
  const config = model.config;
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new JobError(
      "InvalidModel",
      `${modelStore.uri}/tokenizer.json: the tokenizer has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${config.vocabSize}; they must come from the same model`,
    );
  }
  const positions = config.family === "gpt2" ? config.maxPositions : undefined;
  if (positions !== undefined && plan.dataset.options.maxSeqLength > positions) {
    throw new JobError("InvalidSpec", `spec.dataset.maxSeqLength: ${plan.dataset.options.maxSeqLength} is more than the model's n_positions (${positions})`);
  }
}

/** The sample's prompt ids: the given text, or the prompt part of the first eval (else training) example. */
async function samplePrompt(text: string | undefined, data: DataLoader, tokenizer: Tokenizer): Promise<number[] | undefined> {
  if (text !== undefined) return tokenizer.encode(text, { addSpecialTokens: false });
  const batches = data.hasEval ? data.evalBatches(1) : data.trainBatches(1, { epochs: 1 });
  // Returning from the loop closes the generator and the file it reads.
  for await (const batch of batches) {
    if (batch.kind !== "lm") return undefined;
    const prompt = promptOf(batch.tokens.inputIds, batch.tokens.labels, batch.tokens.seqLength);
    return prompt.length > 0 ? prompt : undefined;
  }
  return undefined;
}

function asJobError<T>(body: () => T): T {
  try {
    return body();
  } catch (error) {
    throw toJobError(error);
  }
}

async function rethrow<T>(promise: Promise<T>, modelStore: ObjectStore): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw toJobError(error, modelStore);
  }
}

/**
 * Every failure as a JobError with a reason. Model files are named by their full URI: the
 * loaders name them relative to the model folder.
 */
export function toJobError(error: unknown, modelStore?: ObjectStore): JobError {
  if (error instanceof JobError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const inModel = (file: string) => (modelStore && !/^[a-z]+:\/\//.test(file) ? `${modelStore.uri.replace(/\/+$/, "")}/${message}` : message);
  if (error instanceof PlanError || error instanceof MethodOptionsError || error instanceof CheckpointMismatchError) {
    return new JobError("InvalidSpec", message, { cause: error });
  }
  if (error instanceof ModelLoadError || error instanceof ModelConfigError || error instanceof SafetensorsError || error instanceof TokenizerError) {
    return new JobError("InvalidModel", inModel(error.file), { cause: error });
  }
  if (error instanceof DatasetError) return new JobError("InvalidDataset", message, { cause: error });
  if (error instanceof StorageError) {
    const reason = error.code === "AccessDenied" ? "StorageAccessDenied" : error.code === "NotFound" ? "ModelNotFound" : "StorageUnavailable";
    return new JobError(reason, message, { cause: error });
  }
  if (error instanceof BackendError) return new JobError("TrainerFailed", message, { cause: error });
  return new JobError("TrainerFailed", message, { cause: error });
}
