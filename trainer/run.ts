import type { DefaultedFineTuneJobSpec } from "../api/index.ts";
import { openStore } from "../storage/open-store.ts";
import { StorageError, type ObjectStore } from "../storage/object-store.ts";
import { RetryingObjectStore, TRAINER_RETRY_POLICY } from "../storage/retrying-store.ts";
import type { ManifestEntry } from "../storage/publish.ts";
import { contentSignature } from "../storage/signature.ts";
import { BackendError, selectBackend } from "./backend/backend.ts";
import { DatasetError } from "./data/bad-lines.ts";
import { resolveDatasetKeys } from "./data/files.ts";
import { DataLoader, type DatasetFiles } from "./data/loader.ts";
import { MethodOptionsError, type Adapter } from "./methods/method.ts";
import { getMethod, methodTypes } from "./methods/registry.ts";
import { dpoObjective } from "./objectives/dpo.ts";
import { classCount, classificationObjective } from "./objectives/classification.ts";
import { rewardObjective } from "./objectives/reward.ts";
import { checkRlaifOptions, RLAIF_FOLDER, runRlaif } from "./objectives/rlaif.ts";
import { loadRewardModelJudge, TemplateJudge, type Judge } from "./objectives/rlaif-judge.ts";
import { ScoreHeadAdapter } from "./objectives/score-head.ts";
import type { Objective } from "./objectives/objective.ts";
import { ModelConfigError } from "./model/config.ts";
import { loadModel, ModelLoadError } from "./model/loader.ts";
import type { CausalLM } from "./model/model.ts";
import { trainingMetrics, type TrainingMetrics } from "./output/metrics.ts";
import { adapterFiles, baseModelName, loadableBy, MERGED_FOLDER, mergedModelFiles, reportFiles, writeOutputs } from "./output/output.ts";
import { preflight, type PreflightReason } from "./preflight/preflight.ts";
import { Rng } from "./random.ts";
import { SafetensorsError } from "./safetensors/safetensors.ts";
import { loadTokenizer, TokenizerError, type Tokenizer } from "./tokenizer/tokenizer.ts";
import { CheckpointMismatchError, train } from "./train/loop.ts";
import { checkpointOwner, planJob, PlanError, resumeFingerprint, type JobPlan, type RlaifPlan } from "./train/plan.ts";
import type { ProgressListener } from "./train/progress.ts";
import { continuation, promptOf, sampleBeforeAfter } from "./train/sample.ts";

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
export type FailureReason = PreflightReason | "InvalidSpec" | "TrainerFailed" | "BackendUnavailable";

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
  // Once the inputs are checked, an outage of the store (a restart, a failover) is waited out for a few minutes rather
  // than failing the attempt; before, a wrong endpoint fails at once. Each operation says so once, when it first retries.
  const openDurable = (uri: string) =>
    new RetryingObjectStore(open(uri), {
      ...TRAINER_RETRY_POLICY,
      onRetry: (error, _delayMs, retry) =>
        retry === 1 &&
        options.onProgress?.({ event: "warning", reason: "StorageUnavailable", message: `${error.message}; retrying for up to ${TRAINER_RETRY_POLICY.budgetMs / 1000}s` }),
    });
  const modelStore = open(plan.model.uri);
  const datasetStore = open(plan.dataset.storeUri);
  const stores: JobStores = { model: modelStore, dataset: datasetStore };

  // The cheap checks first, so that a wrong path or a bad first line is reported before the weights load.
  const problems = await rethrow(
    preflight({
      modelStore,
      modelPrefix: "",
      ...(plan.model.architecture ? { architecture: plan.model.architecture } : {}),
      datasetStore,
      datasetKeys: [plan.dataset.train, ...(plan.dataset.eval ? [plan.dataset.eval] : [])],
      dataset: plan.dataset.options,
      method: plan.method,
    }),
    stores,
  );
  if (problems.length > 0) throw new JobError(problems[0]!.reason, problems.map((problem) => problem.message).join("\n"));

  // Before anything else is reported: the first event says what the trainer computes on and why.
  const backend = await rethrow(selectBackend(plan.backend, { gpusRequested: plan.gpusRequested }));
  options.onProgress?.({ event: "backend", ...backend });

  const model = await rethrow(loadModel(modelStore, plan.model.architecture ? { architecture: plan.model.architecture } : {}), stores);
  let adapter: Adapter | undefined;
  try {
    const tokenizer = await rethrow(loadTokenizer(modelStore, ""), stores);
    checkCompatible(plan, model, tokenizer, modelStore);
    const rng = Rng.fromSeed(plan.seed);
    // The model's own dropout (GPT-2's pdrop values) draws from the checkpointed generator too.
    model.dropoutRng = rng;
    const baseModelNameOrPath = await rethrow(baseModelName(spec.baseModel.name, plan.model.uri, modelStore), stores);
    adapter = asJobError(() => getMethod(plan.method.type).inject(model, plan.method.options, { rng, baseModelNameOrPath, optionsPath: plan.method.optionsPath, tokenizer }));
    checkVirtualPositions(plan, model, adapter);
    const files = await rethrow(datasetFiles(plan, openDurable(plan.dataset.storeUri)), stores);
    const data = asJobError(() => new DataLoader(files, plan.dataset.options, tokenizer));
    if (plan.objective.type === "reward" || plan.objective.type === "classification") {
      if (adapter.trainsBaseWeights) {
        throw new JobError("InvalidSpec", `spec.method.type: objective ${plan.objective.type} trains an adapter and a score head; method "${adapter.type}" is not supported with it yet`);
      }
      const labels = plan.objective.type === "reward" ? 1 : await rethrow(classCount(data, plan.dataset.options.classLabels), stores);
      // The score head draws its initial values from the checkpointed generator, after the method's.
      adapter = new ScoreHeadAdapter(adapter, labels, rng);
    }
    const injected = adapter;
    const objective: Objective | undefined =
      plan.objective.type === "dpo"
        ? asJobError(() => invalidSpec(() => dpoObjective(plan.objective as Parameters<typeof dpoObjective>[0], injected)))
        : plan.objective.type === "reward"
          ? rewardObjective(injected)
          : plan.objective.type === "classification"
            ? classificationObjective(injected)
            : undefined;
    const rlaif = plan.objective.type === "rlaif" ? plan.objective : undefined;
    if (rlaif) {
      // The settings' problems before any prompt is read.
      asJobError(() =>
        invalidSpec(() => {
          dpoObjective({ beta: rlaif.beta, labelSmoothing: rlaif.labelSmoothing }, injected);
          checkRlaifOptions({ ...rlaif.rlaif, beta: rlaif.beta, labelSmoothing: rlaif.labelSmoothing });
        }),
      );
    }
    const prompts = rlaif ? await rethrow(readPrompts(files, plan.dataset.options.fields?.text ?? "prompt"), stores) : undefined;
    const fingerprint = resumeFingerprint(plan.fingerprint, await rethrow(inputSignatures(modelStore, files), stores));
    // A reward model's sample would be the base model's text twice: its head scores, it does not write.
    const sample =
      options.sample === false || plan.objective.type === "reward" || plan.objective.type === "classification"
        ? undefined
        : await rethrow(samplePrompt(options.samplePrompt ?? prompts?.[0], data, tokenizer), stores);
    // Full fine-tuning trains the base weights themselves: the sample's "before" is decoded before they change.
    const baseSample = sample && adapter.trainsBaseWeights ? continuation(adapter, tokenizer, sample, { maxLength: plan.dataset.options.maxSeqLength }) : undefined;
    const checkpoints = { store: openDurable(plan.checkpoint.storeUri), folder: plan.checkpoint.folder, owner: checkpointOwner(fingerprint, plan.output.uri) };
    const outcome = await rethrow(
      rlaif
        ? withJudge(rlaif.rlaif.judge, { adapter: injected, tokenizer, modelStore, open }, (judge) =>
            runRlaif({
              adapter: injected,
              tokenizer,
              rng,
              seed: plan.seed,
              prompts: prompts!,
              judge,
              options: { ...rlaif.rlaif, beta: rlaif.beta, labelSmoothing: rlaif.labelSmoothing },
              dataset: plan.dataset.options,
              training: plan.training,
              output: openDurable(plan.output.uri),
              checkpoints,
              fingerprint,
              backend: `${backend.name} (${backend.description})`,
              ...(model.config.family === "gpt2" ? { maxLength: model.config.maxPositions } : {}),
              ...(options.onProgress ? { onProgress: options.onProgress } : {}),
              ...(options.signal ? { signal: options.signal } : {}),
            }),
          )
        : train({
        adapter,
        rng,
        data,
        config: plan.training,
            checkpoints,
            fingerprint,
        backend: `${backend.name} (${backend.description})`,
        ...(objective ? { objective } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      }),
      stores,
    );
    if (outcome.status === "stopped") {
      return { status: "stopped", step: outcome.state.step, totalSteps: outcome.state.totalSteps, checkpoint: outcome.checkpoint };
    }

    const metrics = trainingMetrics(outcome.state, {
      method: plan.method.type,
      baseModel: spec.baseModel.uri,
      architecture: model.config.architecture,
      backend,
      trainableParameters: adapter.trainableParameterCount(),
      baseParameters: model.parameterCount(),
      trainsBaseWeights: adapter.trainsBaseWeights ?? false,
      batchSize: plan.training.batchSize,
      gradientAccumulation: plan.training.gradientAccumulation,
      ...(sample ? { sample: sampleBeforeAfter(adapter, tokenizer, sample, { maxLength: plan.dataset.options.maxSeqLength, ...(baseSample === undefined ? {} : { base: baseSample }) }) } : {}),
    });
    const outputStore = openDurable(plan.output.uri);
    const outputFiles = {
      ...(adapter.trainsBaseWeights ? await mergedModelFiles(adapter, modelStore, { folder: "" }) : adapterFiles(adapter, spec.baseModel.uri)),
      ...reportFiles(metrics, `${plan.method.type} on ${spec.baseModel.uri}`),
      ...(plan.output.mergeIntoBase ? await mergedModelFiles(adapter, modelStore) : {}),
      // RLAIF's audit files, already written round by round, listed in the manifest with the rest.
      ...(rlaif ? await rethrow(rlaifFiles(outputStore)) : {}),
    };
    const manifest = await writeOutputs(outputStore, outputFiles, { step: outcome.state.step, fingerprint });
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
      loadableBy: loadableBy(adapter.adapterConfig(), plan.output.mergeIntoBase, adapter.trainsBaseWeights),
    };
    return { status: "completed", outputs, metrics };
  } finally {
    adapter?.remove();
    model.dispose();
  }
}

/** RLAIF's prompts: field `field` of every record of the training files, in order. */
async function readPrompts(files: DatasetFiles, field: string): Promise<string[]> {
  const prompts: string[] = [];
  for (const key of files.train) {
    const lines = (await files.store.get(key)).toString("utf8").split("\n");
    lines.forEach((line, i) => {
      if (line.trim() === "") return;
      let record: unknown;
      try {
        record = JSON.parse(line);
      } catch (error) {
        throw new DatasetError(`${files.store.uri.replace(/\/+$/, "")}/${key} line ${i + 1}: not JSON (${(error as Error).message})`);
      }
      const prompt = (record as Record<string, unknown> | null)?.[field];
      if (typeof prompt !== "string" || prompt === "") {
        throw new DatasetError(`${files.store.uri.replace(/\/+$/, "")}/${key} line ${i + 1}: objective rlaif needs a non-empty string field "${field}" (the prompt; see dataset.fields.text)`);
      }
      prompts.push(prompt);
    });
  }
  return prompts;
}

/** The RLAIF judge the spec names, for the length of `body`; a reward model's copy of the base model is freed after. */
async function withJudge<T>(
  spec: RlaifPlan["judge"],
  context: { adapter: Adapter; tokenizer: Tokenizer; modelStore: ObjectStore; open: (uri: string) => ObjectStore },
  body: (judge: Judge) => Promise<T>,
): Promise<T> {
  const judge =
    "rewardModelUri" in spec
      ? await loadRewardModelJudge({ adapter: context.open(spec.rewardModelUri), base: context.modelStore }, context.tokenizer).catch((error: unknown) => {
          throw error instanceof StorageError ? error : new PlanError((error as Error).message);
        })
      : invalidSpec(() => new TemplateJudge(context.adapter, context.tokenizer, spec.template, spec.verdictTokens));
  try {
    return await body(judge);
  } finally {
    judge.dispose();
  }
}

/** The rlaif/ files of the output store, to publish them in the manifest. */
async function rlaifFiles(store: ObjectStore): Promise<Record<string, Buffer>> {
  const files: Record<string, Buffer> = {};
  for await (const object of store.list(`${RLAIF_FOLDER}/`)) files[object.key] = await store.get(object.key);
  return files;
}

/** The dataset's files: train and eval each name one file or a prefix of *.jsonl files. */
async function datasetFiles(plan: JobPlan, store: ObjectStore): Promise<DatasetFiles> {
  const train = await resolveDatasetKeys(store, plan.dataset.train);
  return { store, train, ...(plan.dataset.eval ? { eval: await resolveDatasetKeys(store, plan.dataset.eval) } : {}) };
}

/** The content signatures of what training reads: the model folder's config, tokenizer and weight files, and the dataset's files. */
async function inputSignatures(modelStore: ObjectStore, data: DatasetFiles): Promise<string[]> {
  const modelKeys: string[] = [];
  for await (const object of modelStore.list("")) if (/^[^/]+\.(json|safetensors)$/.test(object.key)) modelKeys.push(object.key);
  const signatures: string[] = [];
  for (const key of modelKeys) signatures.push(`model/${key}:${await contentSignature(modelStore, key)}`);
  for (const key of [...data.train, ...(data.eval ?? [])]) signatures.push(`data/${key}:${await contentSignature(data.store, key)}`);
  return signatures;
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

/** GPT-2 places virtual tokens on its learned positions too: prefix or prompt and the longest input must fit n_positions together. */
function checkVirtualPositions(plan: JobPlan, model: CausalLM, adapter: Adapter): void {
  const virtual = adapter.virtualTokens ?? 0;
  const config = model.config;
  if (virtual === 0 || config.family !== "gpt2") return;
  const { maxSeqLength } = plan.dataset.options;
  if (virtual + maxSeqLength > config.maxPositions) {
    throw new JobError(
      "InvalidSpec",
      `${plan.method.optionsPath}: ${virtual} virtual tokens and spec.dataset.maxSeqLength ${maxSeqLength} make ${virtual + maxSeqLength} positions, more than the model's n_positions (${config.maxPositions}); use fewer virtual tokens or a shorter maxSeqLength`,
    );
  }
}

/** The sample's prompt ids: the given text, or the prompt part of the first eval (else training) example. */
async function samplePrompt(text: string | undefined, data: DataLoader, tokenizer: Tokenizer): Promise<number[] | undefined> {
  if (text !== undefined) return tokenizer.encode(text, { addSpecialTokens: false });
  const batches = data.hasEval ? data.evalBatches(1) : data.trainBatches(1, { epochs: 1 });
  // Returning from the loop closes the generator and the file it reads.
  for await (const batch of batches) {
    // A preference pair's prompt is its chosen row's part without loss.
    const tokens = batch.kind === "lm" ? batch.tokens : batch.kind === "preference" ? batch.chosen : undefined;
    if (!tokens) return undefined;
    const prompt = promptOf(tokens.inputIds, tokens.labels, tokens.seqLength);
    return prompt.length > 0 ? prompt : undefined;
  }
  return undefined;
}

/** Runs body, turning what it throws into a PlanError: the spec asks for something this trainer cannot do. */
function invalidSpec<T>(body: () => T): T {
  try {
    return body();
  } catch (error) {
    throw error instanceof Error && !(error instanceof PlanError) ? new PlanError(error.message) : error;
  }
}

function asJobError<T>(body: () => T): T {
  try {
    return body();
  } catch (error) {
    throw toJobError(error);
  }
}

async function rethrow<T>(promise: Promise<T>, stores?: JobStores): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw toJobError(error, stores);
  }
}

/** The stores a job reads, to tell whose object a storage error is about. */
export interface JobStores {
  model?: ObjectStore;
  dataset?: ObjectStore;
}

/**
 * Every failure as a JobError with a reason. Model files are named by their full URI: the
 * loaders name them relative to the model folder.
 */
export function toJobError(error: unknown, stores: JobStores = {}): JobError {
  if (error instanceof JobError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const modelStore = stores.model;
  const inModel = (file: string) => (modelStore && !/^[a-z]+:\/\//.test(file) ? `${modelStore.uri.replace(/\/+$/, "")}/${message}` : message);
  if (error instanceof PlanError || error instanceof MethodOptionsError || error instanceof CheckpointMismatchError) {
    return new JobError("InvalidSpec", message, { cause: error });
  }
  if (error instanceof ModelLoadError || error instanceof ModelConfigError || error instanceof SafetensorsError || error instanceof TokenizerError) {
    return new JobError("InvalidModel", inModel(error.file), { cause: error });
  }
  if (error instanceof DatasetError) return new JobError("InvalidDataset", message, { cause: error });
  if (error instanceof StorageError) {
    const reason = error.code === "AccessDenied" ? "StorageAccessDenied" : error.code === "NotFound" ? missingReason(error.uri, stores) : "StorageUnavailable";
    return new JobError(reason, message, { cause: error });
  }
  if (error instanceof BackendError) return new JobError("BackendUnavailable", message, { cause: error });
  return new JobError("TrainerFailed", message, { cause: error });
}

/**
 * A missing object is the model's (ModelNotFound), the dataset's (InvalidDataset), or in a
 * location the spec names that does not exist, such as an output bucket (InvalidSpec). The
 * store with the longer root wins, for a dataset kept inside the model's folder.
 */
function missingReason(uri: string, stores: JobStores): FailureReason {
  const owners: [FailureReason, ObjectStore | undefined][] = [
    ["ModelNotFound", stores.model],
    ["InvalidDataset", stores.dataset],
  ];
  const within = owners
    .flatMap(([reason, store]) => (store ? [{ reason, root: store.uri.replace(/\/+$/, "") }] : []))
    .filter(({ root }) => uri === root || uri.startsWith(`${root}/`))
    .sort((a, b) => b.root.length - a.root.length);
  return within[0]?.reason ?? "InvalidSpec";
}
