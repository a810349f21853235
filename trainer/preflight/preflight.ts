import { StorageError, joinKey, type ObjectStore } from "../../storage/object-store.ts";
import { BadLineCounter, DatasetError, formatBadLine } from "../data/bad-lines.ts";
import { objectUri, resolveDatasetKeys } from "../data/files.ts";
import { isBlankLine, readLines } from "../data/lines.ts";
import { tokenizerMismatch } from "../data/loader.ts";
import { checkDatasetOptions, resolveDatasetOptions, type DatasetOptions } from "../data/options.ts";
import { parseSourceLine, type ExampleContext } from "../data/records.ts";
import { ModelConfigError, parseModelConfig, type ModelConfig } from "../model/config.ts";
import { MODEL_CONFIG_FILE, TokenizerError, loadTokenizer, type Tokenizer } from "../tokenizer/tokenizer.ts";
import { methodProblem, type MethodSpec } from "./method.ts";

/**
 * Why a job cannot start, as its Failed condition's reason. StorageUnavailable is the one a
 * retry may cure; the others need the user to fix the spec, the files or the permissions.
 */
export type PreflightReason = "ModelNotFound" | "InvalidModel" | "InvalidDataset" | "InvalidSpec" | "StorageAccessDenied" | "StorageUnavailable";

export interface PreflightProblem {
  reason: PreflightReason;
  /** What is wrong and where: the object's URI, and for a dataset line "file:line: problem". */
  message: string;
}

export interface PreflightInput {
  modelStore: ObjectStore;
  /** The model folder's key prefix in modelStore. */
  modelPrefix: string;
  /** The FineTuneJob's baseModel.architecture override, if any. */
  architecture?: string;
  datasetStore: ObjectStore;
  /** Dataset files, or folders of *.jsonl files: train and eval alike. */
  datasetKeys: string[];
  dataset: DatasetOptions;
  /** The job's method (JobPlan.method): checked against the model's architecture when given. */
  method?: MethodSpec;
  /** Lines checked at the start of each dataset file. Default 100. */
  sampleLines?: number;
}

/**
 * The checks a job passes before it holds a GPU: the base model's config.json parses into a
 * supported architecture that the job's method can work on (trainer/preflight/method.ts), its
 * tokenizer loads, its weights exist, the dataset options fit the
 * tokenizer, and each dataset file exists and starts with lines that parse against the
 * format (chat lines are rendered with the model's template too). Returns every problem
 * found; an empty list means go. Cheap: it reads the model's small files and the first
 * sampleLines lines of each dataset file.
 */
export async function preflight(input: PreflightInput): Promise<PreflightProblem[]> {
  const problems: PreflightProblem[] = [];
  const { tokenizer, config } = await checkModel(input, problems);
  const methodMismatch = input.method && config && methodProblem(input.method, config);
  if (methodMismatch) problems.push({ reason: "InvalidSpec", message: methodMismatch });
  await checkDataset(input, tokenizer, problems);
  return problems;
}

async function checkModel(input: PreflightInput, problems: PreflightProblem[]): Promise<{ tokenizer?: Tokenizer; config?: ModelConfig }> {
  const { modelStore: store, modelPrefix: prefix } = input;
  const configUri = objectUri(store, joinKey(prefix, MODEL_CONFIG_FILE));
  let config: ModelConfig | undefined;
  try {
    const text = (await store.get(joinKey(prefix, MODEL_CONFIG_FILE))).toString("utf8");
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (error) {
      throw new ModelConfigError(configUri, `is not valid JSON (${(error as Error).message})`);
    }
    config = parseModelConfig(json, { file: configUri, ...(input.architecture === undefined ? {} : { architectureOverride: input.architecture }) });
  } catch (error) {
    problems.push(modelProblem(error, "the base model's config.json is missing; baseModel.uri must name a Hugging Face model folder"));
    // Without its config the folder is not a model; the other files would only repeat that.
    if (error instanceof StorageError) return {};
  }

  let tokenizer: Tokenizer | undefined;
  try {
    tokenizer = await loadTokenizer(store, prefix);
  } catch (error) {
    problems.push(modelProblem(error, "the base model has no tokenizer.json (the fast-tokenizer file)"));
  }

  try {
    let weights = false;
    for await (const info of store.list(prefix === "" ? "" : `${joinKey(prefix)}/`)) {
      if (info.key.endsWith(".safetensors")) {
        weights = true;
        break;
      }
    }
    if (!weights) {
      problems.push({ reason: "ModelNotFound", message: `${objectUri(store, joinKey(prefix))}: no *.safetensors weights in the base model folder` });
    }
  } catch (error) {
    problems.push(modelProblem(error, "cannot list the base model folder"));
  }
  return { tokenizer, config };
}

async function checkDataset(input: PreflightInput, tokenizer: Tokenizer | undefined, problems: PreflightProblem[]): Promise<void> {
  const optionProblems = checkDatasetOptions(input.dataset);
  if (optionProblems.length > 0) {
    for (const problem of optionProblems) problems.push({ reason: "InvalidDataset", message: `dataset options: ${problem}` });
    return;
  }
  const options = resolveDatasetOptions(input.dataset);
  const mismatch = tokenizer && tokenizerMismatch(options, tokenizer);
  if (mismatch) problems.push({ reason: "InvalidDataset", message: mismatch });
  const context: ExampleContext = {
    format: options.format,
    fields: options.fields,
    instructionTemplate: options.instructionTemplate,
    classLabels: options.classLabels,
    tokenizer: tokenizer?.chatTemplate === undefined ? undefined : tokenizer,
  };
  const sampleLines = input.sampleLines ?? 100;
  const store = input.datasetStore;

  for (const keyOrFolder of input.datasetKeys) {
    let keys: string[];
    try {
      keys = await resolveDatasetKeys(store, keyOrFolder);
    } catch (error) {
      problems.push(datasetProblem(error, options.badLines));
      continue;
    }
    for (const key of keys) {
      const file = objectUri(store, key);
      // The sample is judged as training would judge it: "fail" stops at its first bad line,
      // "skip" only at more bad lines than the limits allow.
      const counter = new BadLineCounter(options, `first ${sampleLines} lines of ${file}`, undefined);
      let lines = 0;
      try {
        for await (const source of readLines(await store.getStream(key), options.maxLineBytes)) {
          if (isBlankLine(source)) continue;
          counter.read();
          const result = parseSourceLine(source, context, options.maxLineBytes);
          if (result.problem !== undefined) counter.report({ file, line: source.line, problem: result.problem });
          if (++lines >= sampleLines) break;
        }
        counter.finish();
        if (lines === 0) problems.push({ reason: "InvalidDataset", message: `${file}: the file is empty` });
      } catch (error) {
        problems.push(datasetProblem(error, options.badLines));
      }
    }
  }
}

function modelProblem(error: unknown, notFound: string): PreflightProblem {
  if (error instanceof StorageError) return storageProblem(error, "ModelNotFound", notFound);
  if (error instanceof ModelConfigError || error instanceof TokenizerError) return { reason: "InvalidModel", message: error.message };
  throw error;
}

function datasetProblem(error: unknown, policy: "fail" | "skip"): PreflightProblem {
  if (error instanceof StorageError) return storageProblem(error, "InvalidDataset", "the dataset file does not exist");
  if (error instanceof DatasetError) {
    // Under "fail" the error is one bad line; its plain "file:line: problem" says it all.
    const first = error.badLines[0];
    return { reason: "InvalidDataset", message: policy === "fail" && first ? formatBadLine(first) : error.message };
  }
  throw error;
}

function storageProblem(error: StorageError, missingReason: PreflightReason, missing: string): PreflightProblem {
  switch (error.code) {
    case "NotFound":
    case "InvalidUri":
      return { reason: missingReason, message: `${error.message} (${missing})` };
    case "AccessDenied":
      return { reason: "StorageAccessDenied", message: `${error.message} (check spec.storage: the credentials must allow reading it)` };
    default:
      return { reason: "StorageUnavailable", message: error.message };
  }
}
