import { DatasetError } from "./bad-lines.ts";

/**
 * The data pipeline's options as plain data. The FineTuneJob API's `dataset` block maps onto
 * DatasetOptions; defaults and checks live here, next to the fields.
 */

export type DatasetFormat = "text" | "instruction" | "chat" | "preference" | "classification";

export const DATASET_FORMATS: readonly DatasetFormat[] = ["text", "instruction", "chat", "preference", "classification"];

/** The fields each format reads from a JSONL object; `fields` may rename any of them. */
export const FORMAT_FIELDS = {
  text: ["text"],
  instruction: ["instruction", "input", "output"],
  chat: ["messages", "role", "content"],
  /** chosen and rejected may also be lists of messages (TRL's conversational layout), whose role and content may be renamed. */
  preference: ["prompt", "chosen", "rejected", "role", "content"],
  classification: ["text", "label"],
} as const satisfies Record<DatasetFormat, readonly string[]>;

/** The name each field has in the files, by its name in the format, e.g. { instruction: "question", output: "answer" }. */
export type FieldMapping = Partial<Record<string, string>>;

/** How an instruction record becomes the prompt; `{instruction}` and `{input}` are replaced. */
export interface InstructionTemplate {
  /** For records with a non-empty `input`. */
  withInput: string;
  /** For records without one. */
  withoutInput: string;
}

/** The Alpaca prompt format. */
export const ALPACA_TEMPLATE: InstructionTemplate = {
  withInput: "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
  withoutInput: "### Instruction:\n{instruction}\n\n### Response:\n",
};

export interface DatasetOptions {
  format: DatasetFormat;
  /** Field renames, by the format's field name; chat may also rename `role` and `content` inside messages. */
  fields?: FieldMapping;
  /** The longest sequence, in tokens; longer examples are cut at the end (and packed blocks have this length). */
  maxSeqLength: number;
  /** Concatenate examples, each ending in EOS, and cut the stream into maxSeqLength blocks (text, instruction, chat). Default false. */
  packing?: boolean;
  /** Unpacked batches are padded to their longest row ("longest", default) or always to maxSeqLength. */
  padding?: "longest" | "maxSeqLength";
  /** Seeds the order of examples and the eval split. Default 0. */
  seed?: number;
  /** Shuffle the training examples each epoch. Default true. */
  shuffle?: boolean;
  /** Examples held by the shuffle buffer; the whole dataset is shuffled uniformly when it fits. Default 10,000. */
  shuffleBufferSize?: number;
  /** The share of training lines held out for evaluation, chosen by a hash of seed, file and line. Default 0. */
  evalFraction?: number;
  /** "fail" (default) stops at the first bad line; "skip" skips and counts bad lines up to the limits below. */
  badLines?: "fail" | "skip";
  /** With "skip": fail once more lines than this are bad. Default: no count limit. */
  maxBadLines?: number;
  /** With "skip": fail once this share of lines is bad (checked from 1,000 lines on, and at the end of each pass). Default 0.1. */
  maxBadFraction?: number;
  /** The instruction format's prompt. Default Alpaca. */
  instructionTemplate?: InstructionTemplate;
  /** The classification format's classes: a string label is its index here; an integer label is the index itself. */
  classLabels?: string[];
  /** A line longer than this many bytes is a bad line (a JSON array uploaded as JSONL, say). Default 16 MiB. */
  maxLineBytes?: number;
}

/** DatasetOptions with every default filled in. */
export type ResolvedDatasetOptions = Required<Omit<DatasetOptions, "classLabels" | "maxBadLines">> & {
  classLabels: string[] | undefined;
  maxBadLines: number;
};

export function resolveDatasetOptions(options: DatasetOptions): ResolvedDatasetOptions {
  const problems = checkDatasetOptions(options);
  if (problems.length > 0) throw new DatasetError(`invalid dataset options: ${problems.join("; ")}`);
  return {
    format: options.format,
    fields: options.fields ?? {},
    maxSeqLength: options.maxSeqLength,
    packing: options.packing ?? false,
    padding: options.padding ?? "longest",
    seed: options.seed ?? 0,
    shuffle: options.shuffle ?? true,
    shuffleBufferSize: options.shuffleBufferSize ?? 10_000,
    evalFraction: options.evalFraction ?? 0,
    badLines: options.badLines ?? "fail",
    maxBadLines: options.maxBadLines ?? Number.POSITIVE_INFINITY,
    maxBadFraction: options.maxBadFraction ?? 0.1,
    instructionTemplate: options.instructionTemplate ?? ALPACA_TEMPLATE,
    classLabels: options.classLabels,
    maxLineBytes: options.maxLineBytes ?? 16 * 1024 * 1024,
  };
}

/** Every problem with `options`, as "field: message"; empty when they are usable. */
export function checkDatasetOptions(options: DatasetOptions): string[] {
  const problems: string[] = [];
  if (!DATASET_FORMATS.includes(options.format)) {
    problems.push(`format: must be one of ${DATASET_FORMATS.join(", ")}, got ${JSON.stringify(options.format)}`);
    return problems;
  }
  const known: readonly string[] = FORMAT_FIELDS[options.format];
  for (const [field, renamed] of Object.entries(options.fields ?? {})) {
    if (!known.includes(field)) problems.push(`fields.${field}: the ${options.format} format has no field "${field}" (it has ${known.join(", ")})`);
    else if (typeof renamed !== "string" || renamed === "") problems.push(`fields.${field}: must be a non-empty string`);
  }
  if (!Number.isInteger(options.maxSeqLength) || options.maxSeqLength < 2) {
    problems.push(`maxSeqLength: must be an integer of at least 2, got ${options.maxSeqLength}`);
  }
  if (options.packing && (options.format === "preference" || options.format === "classification")) {
    problems.push(`packing: not available for the ${options.format} format`);
  }
  if (options.seed !== undefined && !Number.isInteger(options.seed)) problems.push(`seed: must be an integer, got ${options.seed}`);
  if (options.shuffleBufferSize !== undefined && (!Number.isInteger(options.shuffleBufferSize) || options.shuffleBufferSize < 1)) {
    problems.push(`shuffleBufferSize: must be a positive integer, got ${options.shuffleBufferSize}`);
  }
  if (options.evalFraction !== undefined && !(options.evalFraction >= 0 && options.evalFraction < 1)) {
    problems.push(`evalFraction: must be at least 0 and below 1, got ${options.evalFraction}`);
  }
  if (options.maxBadLines !== undefined && !(Number.isInteger(options.maxBadLines) && options.maxBadLines >= 0)) {
    problems.push(`maxBadLines: must be a non-negative integer, got ${options.maxBadLines}`);
  }
  if (options.maxBadFraction !== undefined && !(options.maxBadFraction >= 0 && options.maxBadFraction <= 1)) {
    problems.push(`maxBadFraction: must be between 0 and 1, got ${options.maxBadFraction}`);
  }
  if (options.format === "classification" && options.classLabels !== undefined) {
    if (options.classLabels.length < 2 || new Set(options.classLabels).size !== options.classLabels.length) {
      problems.push("classLabels: must list at least two distinct labels");
    }
  }
  if (options.instructionTemplate !== undefined) {
    const { withInput, withoutInput } = options.instructionTemplate;
    if (!withInput.includes("{instruction}") || !withInput.includes("{input}")) {
      problems.push("instructionTemplate.withInput: must contain {instruction} and {input}");
    }
    if (!withoutInput.includes("{instruction}")) problems.push("instructionTemplate.withoutInput: must contain {instruction}");
  }
  return problems;
}

/** The name a field has in the files. */
export function fieldName(fields: FieldMapping, field: string): string {
  return fields[field] ?? field;
}
