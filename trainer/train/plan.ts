import type { DefaultedFineTuneJobSpec } from "../../api/index.ts";
import { parseLocation } from "../../storage/open-store.ts";
import type { S3Options } from "../../storage/s3-store.ts";
import type { BackendPreference } from "../backend/backend.ts";
import { CHECKPOINTS_PREFIX } from "../checkpoint/checkpoint.ts";
import type { DatasetOptions, FieldMapping, InstructionTemplate } from "../data/options.ts";
import { hash32 } from "../data/order.ts";
import type { TrainingConfig } from "./loop.ts";

/**
 * A FineTuneJob's defaulted spec as the options of each part of the trainer: where the model,
 * data, output and checkpoints are, the method's options, the data pipeline's options and the
 * loop's hyperparameters. Pure: nothing is read or opened here.
 */
export interface JobPlan {
  model: { uri: string; architecture?: string };
  method: { type: string; options: unknown; optionsPath: string };
  /** What training minimises: the loop's next-token loss (sft), or DPO with its options (trainer/objectives/dpo.ts). */
  objective:
    | { type: "sft" }
    | { type: "dpo"; beta: number; labelSmoothing: number }
    | { type: "reward" }
    | { type: "classification" }
    // RLAIF (trainer/objectives/rlaif.ts): the DPO options, the round settings and the judge.
    | { type: "rlaif"; beta: number; labelSmoothing: number; rlaif: RlaifPlan };
  dataset: {
    /** The store the training (and eval) files are read from, and their keys in it. */
    storeUri: string;
    train: string;
    eval?: string;
    options: DatasetOptions;
  };
  training: TrainingConfig;
  seed: number;
  output: { uri: string; mergeIntoBase: boolean };
  /** Checkpoints go to `folder` (one path segment) of the store at storeUri. */
  checkpoint: { storeUri: string; folder: string; uri: string };
  storage: Pick<S3Options, "endpoint" | "region" | "forcePathStyle">;
  backend: BackendPreference;
  /** resources.gpus: a job that asked for GPUs and computes on a CPU says so. */
  gpusRequested: number;
  /** A hash of every setting that decides the trained numbers, kept in checkpoints. */
  fingerprint: string;
}

/**
 * The fingerprint a run's checkpoints carry: the plan's settings and the signatures of its
 * inputs' contents (storage/signature.ts), so that a model or dataset replaced in place is not
 * resumed on.
 */
export function resumeFingerprint(settings: string, inputSignatures: readonly string[]): string {
  return hash32(JSON.stringify([settings, inputSignatures])).toString(16).padStart(8, "0");
}

/**
 * The owner of a run's checkpoints (checkpoint.ts): what it computes (the resume fingerprint)
 * and where its result goes. Jobs sharing a checkpoint folder own different checkpoints unless
 * they are the same job run again.
 */
export function checkpointOwner(fingerprint: string, outputUri: string): string {
  return hash32(JSON.stringify([fingerprint, outputUri])).toString(16).padStart(8, "0");
}

/** A spec the trainer cannot run, though the API accepts it; the message names the field. */
export class PlanError extends Error {
  override name = "PlanError";
}

/**
 * The instruction format's prompt is the record's prompt field as written: the quickstart and
 * most datasets format the prompt themselves. A record's optional input (Alpaca's
 * instruction/input/output layout) follows it after a blank line, as the API's
 * dataset.fields.input documents.
 */
export const RAW_PROMPT_TEMPLATE: InstructionTemplate = { withInput: "{instruction}\n\n{input}", withoutInput: "{instruction}" };

/**
 * `baseDir` resolves relative local paths (the manifest's folder for `kubetune run`); URIs
 * in the plan are absolute.
 */
export function planJob(spec: DefaultedFineTuneJobSpec, options: { baseDir?: string } = {}): JobPlan {
  const baseDir = options.baseDir ?? process.cwd();
  const absolute = (uri: string) => resolveUri(uri, baseDir);
  const { dataset, hyperparameters: h, method, objective } = spec;

  if ((objective.type === "classification") !== (dataset.format === "classification")) {
    throw new PlanError(`spec.objective.type: classification trains on (and only on) dataset.format classification; got objective ${objective.type} with format ${dataset.format}`);
  }
  // The API's rules tie preference data to dpo both ways; checked again for specs built in code.
  if ((objective.type === "dpo" || objective.type === "reward") !== (dataset.format === "preference")) {
    throw new PlanError(`spec.objective.type: dpo and reward train on (and only on) dataset.format preference; got objective ${objective.type} with format ${dataset.format}`);
  }
  if ((objective.type === "reward" || objective.type === "classification") && spec.output.mergeIntoBase) {
    throw new PlanError(`spec.output.mergeIntoBase: a ${objective.type} model's score head has no place in a causal LM; load the adapter with PEFT (task_type SEQ_CLS) instead`);
  }
  const outputUri = absolute(spec.output.uri);
  const checkpointUri = absolute(spec.checkpoint.uri ?? `${spec.output.uri.replace(/\/+$/, "")}/${CHECKPOINTS_PREFIX}`);
  if (trimSlashes(checkpointUri) === trimSlashes(outputUri)) {
    throw new PlanError("spec.checkpoint.uri: must differ from output.uri (checkpoints are pruned, and pruning must never touch the outputs)");
  }
  const checkpoint = splitLastSegment(checkpointUri);
  const data = datasetLocation(absolute(dataset.train), dataset.eval === undefined ? undefined : absolute(dataset.eval));

  const datasetOptions: DatasetOptions = {
    format: dataset.format,
    fields: dataFields(dataset.format, dataset.fields as Record<string, string>),
    maxSeqLength: dataset.maxSeqLength,
    packing: dataset.packing,
    seed: h.seed,
    shuffleBufferSize: dataset.shuffleBuffer,
    evalFraction: dataset.eval === undefined ? (dataset.evalFraction ?? 0) : 0,
    badLines: dataset.badLines,
    maxBadFraction: dataset.maxBadLineFraction,
    ...(dataset.format === "instruction" ? { instructionTemplate: RAW_PROMPT_TEMPLATE } : {}),
    ...(dataset.format === "classification" && dataset.labels !== undefined ? { classLabels: [...dataset.labels] } : {}),
  };
  const training: TrainingConfig = {
    ...(h.maxSteps !== undefined ? { maxSteps: h.maxSteps } : { epochs: h.epochs ?? 1 }),
    batchSize: h.batchSize,
    gradientAccumulation: h.gradientAccumulation,
    learningRate: h.learningRate,
    scheduler: h.scheduler,
    ...(h.warmupRatio !== undefined ? { warmupRatio: h.warmupRatio } : { warmupSteps: h.warmupSteps ?? 0 }),
    weightDecay: h.weightDecay,
    adamBeta1: h.adamBeta1,
    adamBeta2: h.adamBeta2,
    adamEpsilon: h.adamEpsilon,
    maxGradNorm: h.maxGradNorm,
    ...(h.evalEverySteps !== undefined ? { evalEverySteps: h.evalEverySteps } : {}),
    checkpointEverySteps: spec.checkpoint.everySteps,
    checkpointKeep: spec.checkpoint.keep,
    gradientCheckpointing: spec.trainer.gradientCheckpointing,
  };
  const methodOptions = methodOptionsOf(method as { type: string } & Record<string, unknown>);
  // Settings that change the numbers; where things are and how often they are saved do not.
  const { evalEverySteps: _evalEverySteps, ...numericHyperparameters } = h;
  const fingerprint = hash32(JSON.stringify([spec.baseModel, dataset, method, objective, numericHyperparameters])).toString(16).padStart(8, "0");

  return {
    model: { uri: absolute(spec.baseModel.uri), ...(spec.baseModel.architecture ? { architecture: spec.baseModel.architecture } : {}) },
    method: { type: method.type, options: methodOptions, optionsPath: `spec.method.${method.type}` },
    objective:
      objective.type === "dpo"
        ? { type: "dpo", beta: objective.dpo?.beta ?? 0.1, labelSmoothing: objective.dpo?.labelSmoothing ?? 0 }
        : objective.type === "reward" || objective.type === "classification"
          ? { type: objective.type }
          : objective.type === "rlaif"
            ? { type: "rlaif", beta: objective.dpo?.beta ?? 0.1, labelSmoothing: objective.dpo?.labelSmoothing ?? 0, rlaif: rlaifPlan(objective.rlaif, absolute) }
            : { type: "sft" },
    dataset: { ...data, options: datasetOptions },
    training,
    seed: h.seed,
    output: { uri: outputUri, mergeIntoBase: spec.output.mergeIntoBase },
    checkpoint: { ...checkpoint, uri: checkpointUri },
    storage: {
      ...(spec.storage.endpoint ? { endpoint: spec.storage.endpoint } : {}),
      ...(spec.storage.region ? { region: spec.storage.region } : {}),
      forcePathStyle: spec.storage.forcePathStyle,
    },
    backend: spec.trainer.backend,
    gpusRequested: spec.resources.gpus,
    fingerprint,
  };
}

/**
 * The method block as the method takes it. The API writes LoRA's "all-linear" as a one-item
 * list (targetModules is always a list there); the method takes the bare string, as PEFT does.
 */
function methodOptionsOf(method: { type: string } & Record<string, unknown>): unknown {
  const block = method[method.type];
  if (typeof block !== "object" || block === null) return block;
  const { targetModules } = block as { targetModules?: unknown };
  if (Array.isArray(targetModules) && targetModules.length === 1 && targetModules[0] === "all-linear") {
    return { ...block, targetModules: "all-linear" };
  }
  return block;
}

/** The API names a format's fields after the format (prompt, completion); the data pipeline after its record layout. */
/** RLAIF's settings with the judge's reward model folder resolved like every other URI. */
export interface RlaifPlan {
  rounds: number;
  samplesPerPrompt: number;
  minResponseTokens: number;
  temperature: number;
  topP: number;
  maxNewTokens: number;
  stepsPerRound: number;
  judge: { rewardModelUri: string } | { template: string; verdictTokens: [string, string] };
}

function rlaifPlan(rlaif: DefaultedFineTuneJobSpec["objective"]["rlaif"], absolute: (uri: string) => string): RlaifPlan {
  if (!rlaif) throw new PlanError("spec.objective.rlaif: is required when objective.type is rlaif");
  const { judge, ...settings } = rlaif;
  if (judge.rewardModel) return { ...settings, judge: { rewardModelUri: absolute(judge.rewardModel.uri) } };
  if (judge.template === undefined || judge.verdictTokens?.length !== 2) {
    throw new PlanError("spec.objective.rlaif.judge: set rewardModel.uri, or template with two verdictTokens");
  }
  return { ...settings, judge: { template: judge.template, verdictTokens: [judge.verdictTokens[0]!, judge.verdictTokens[1]!] } };
}

function dataFields(format: DefaultedFineTuneJobSpec["dataset"]["format"], fields: Record<string, string>): FieldMapping {
  if (format === "instruction") return { instruction: fields.prompt ?? "prompt", output: fields.completion ?? "completion", input: fields.input ?? "input" };
  return { ...fields };
}

/** An absolute local path or an s3:// URI. */
export function resolveUri(uri: string, baseDir: string): string {
  const location = parseLocation(uri, baseDir);
  return location.kind === "s3" ? uri.replace(/\/+$/, "") : location.path;
}

/** The dataset's store (the folder or bucket prefix holding its files) and the keys of train and eval in it. */
export function datasetLocation(train: string, evalUri: string | undefined): { storeUri: string; train: string; eval?: string } {
  const uris = evalUri === undefined ? [train] : [train, evalUri];
  const parsed = uris.map((uri) => parseLocation(uri));
  const kinds = new Set(parsed.map((location) => (location.kind === "s3" ? `s3://${location.bucket}` : "local")));
  if (kinds.size > 1) {
    throw new PlanError("spec.dataset.eval: must be in the same bucket (or, for local paths, on the same machine) as dataset.train");
  }
  const paths = parsed.map((location) => (location.kind === "s3" ? location.prefix : location.path));
  const root = commonFolder(paths.map((p) => parentOf(p)));
  const key = (p: string) => (root === "" || root === "/" ? p.replace(/^\/+/, "") : p.slice(root.length + 1));
  const first = parsed[0]!;
  const storeUri = first.kind === "s3" ? `s3://${first.bucket}${root ? `/${root}` : ""}` : root || "/";
  return { storeUri, train: key(paths[0]!), ...(paths[1] !== undefined ? { eval: key(paths[1]) } : {}) };
}

/** A checkpoint URI as its parent (the store) and its last path segment (the folder in it). */
export function splitLastSegment(uri: string): { storeUri: string; folder: string } {
  const trimmed = trimSlashes(uri);
  const location = parseLocation(trimmed);
  if (location.kind === "s3" && location.prefix === "") return { storeUri: trimmed, folder: CHECKPOINTS_PREFIX };
  const slash = trimmed.lastIndexOf("/");
  return { storeUri: trimmed.slice(0, slash) || "/", folder: trimmed.slice(slash + 1) };
}

function parentOf(p: string): string {
  const slash = p.lastIndexOf("/");
  return slash <= 0 ? (p.startsWith("/") ? "/" : "") : p.slice(0, slash);
}

function commonFolder(folders: string[]): string {
  const split = folders.map((folder) => folder.split("/"));
  const common: string[] = [];
  for (let i = 0; split.every((parts) => i < parts.length && parts[i] === split[0]![i]); i++) common.push(split[0]![i]!);
  const joined = common.join("/");
  return joined === "" && folders[0]!.startsWith("/") ? "/" : joined;
}

function trimSlashes(uri: string): string {
  return uri.length > 1 ? uri.replace(/\/+$/, "") : uri;
}

