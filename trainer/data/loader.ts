import type { ObjectStore } from "../../storage/object-store.ts";
import { Rng } from "../random.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { BadLineCounter, DatasetError, type BadLine } from "./bad-lines.ts";
import { Packer, RowQueue, collate, type BatchData, type Row, type RowAssembler } from "./batching.ts";
import { encodeExample } from "./encode.ts";
import { objectUri } from "./files.ts";
import { isBlankLine, readLines } from "./lines.ts";
import { resolveDatasetOptions, type DatasetOptions, type ResolvedDatasetOptions } from "./options.ts";
import { epochRng, hash32, isEvalLine, permute, shuffleBuffer } from "./order.ts";
import { parseSourceLine, type Example, type ExampleContext } from "./records.ts";

/** The dataset's files: keys in one store. */
export interface DatasetFiles {
  store: ObjectStore;
  train: string[];
  /** A separate eval set; otherwise options.evalFraction holds out part of train, or there is none. */
  eval?: string[];
}

/**
 * Where the training data stands after a batch, small and serializable for a checkpoint.
 * A loader given it yields exactly the batches an uninterrupted loader would have yielded next.
 */
export interface DataPosition {
  /** The epoch being read, from 0. */
  epoch: number;
  /** Examples taken from the epoch's shuffled order so far. */
  cursor: number;
  /** How many of the last taken examples still have tokens not yet in a batch (packing carries them over). */
  pendingRecords: number;
  /** Tokens of the first of those already in a batch. */
  pendingOffset: number;
  /** The state of the epoch's order generator at the start of the epoch. */
  rng: number[];
  /** A hash of the options and files that decide the order; a position only fits a loader with the same. */
  fingerprint: string;
}

export type Batch = BatchData & {
  /** The epoch this batch belongs to. */
  epoch: number;
  /** The position after this batch: save it with a checkpoint taken after training on it. */
  position: DataPosition;
};

/** Counts for the latest pass over the training or the eval data. */
export interface PassStats {
  /** Lines read that belong to this split. */
  lines: number;
  badLines: number;
  /** Lines that made an example (a resumed pass counts those it replayed). */
  examples: number;
  /** Examples left out because truncation left them no token with a loss (of those tokenized in this pass; a resumed pass skips some). */
  dropped: number;
}

export interface DataLoaderHooks {
  /** Each skipped bad line (badLines "skip"), e.g. to log the first few. */
  onBadLine?(badLine: BadLine, split: "train" | "eval"): void;
}

/**
 * Streams a JSONL dataset as batches: lines are read one at a time from the object store,
 * parsed against the format, shuffled (order.ts), tokenized, truncated or packed, and padded.
 * Memory holds the shuffle buffer and one batch, never the dataset.
 */
export class DataLoader {
  readonly options: ResolvedDatasetOptions;
  readonly stats: { train: PassStats; eval: PassStats } = { train: emptyStats(), eval: emptyStats() };
  private readonly context: ExampleContext;
  private readonly fingerprint: string;

  constructor(
    private readonly files: DatasetFiles,
    options: DatasetOptions,
    private readonly tokenizer: Tokenizer,
    private readonly hooks: DataLoaderHooks = {},
  ) {
    this.options = resolveDatasetOptions(options);
    if (files.train.length === 0) throw new DatasetError("the dataset has no training files");
    if (files.eval !== undefined && this.options.evalFraction > 0) {
      throw new DatasetError("give either eval files or evalFraction, not both");
    }
    const mismatch = tokenizerMismatch(this.options, tokenizer);
    if (mismatch) throw new DatasetError(mismatch);
    this.context = {
      format: this.options.format,
      fields: this.options.fields,
      instructionTemplate: this.options.instructionTemplate,
      classLabels: this.options.classLabels,
      tokenizer,
    };
    const o = this.options;
    this.fingerprint = hash32(
      JSON.stringify([
        ...[o.format, o.fields, o.maxSeqLength, o.packing, o.seed, o.shuffle, o.shuffleBufferSize, o.evalFraction],
        ...[o.instructionTemplate, o.classLabels, files.train, tokenizer.vocabSize],
      ]),
    )
      .toString(16)
      .padStart(8, "0");
  }

  /** Whether there is eval data (eval files or evalFraction). */
  get hasEval(): boolean {
    return this.files.eval !== undefined || this.options.evalFraction > 0;
  }

  /** The position at the start of training. */
  start(): DataPosition {
    return this.positionAt(0, epochRng(this.options.seed, 0).state(), 0, undefined);
  }

  /**
   * Training batches of `batchSize` rows, epoch after epoch (until `epochs`, or for ever),
   * from the start or from a saved position. The last batch of an epoch may have fewer rows.
   */
  async *trainBatches(batchSize: number, options: { from?: DataPosition; epochs?: number } = {}): AsyncGenerator<Batch> {
    checkBatchSize(batchSize);
    const from = options.from;
    if (from) this.checkPosition(from);
    for (let epoch = from?.epoch ?? 0; options.epochs === undefined || epoch < options.epochs; epoch++) {
      yield* this.epochBatches(epoch, batchSize, epoch === from?.epoch ? from : undefined);
    }
  }

  private async *epochBatches(epoch: number, batchSize: number, resume: DataPosition | undefined): AsyncGenerator<Batch> {
    const rngStart = resume?.rng ?? epochRng(this.options.seed, epoch).state();
    const rng = Rng.fromState(rngStart);
    this.stats.train = emptyStats();
    const counter = new BadLineCounter(this.options, "training data", (badLine) => this.hooks.onBadLine?.(badLine, "train"));
    const files = this.options.shuffle ? permute(this.files.train, rng) : this.files.train;
    const isTrain = (key: string, line: number): boolean => !isEvalLine(this.options.seed, key, line, this.options.evalFraction);
    const examples = this.examples(files, isTrain, counter, this.stats.train);
    const ordered = this.options.shuffle ? shuffleBuffer(examples, this.options.shuffleBufferSize, rng) : examples;
    const rows = this.assembler();
    let cursor = 0;
    const next = async (): Promise<Example | undefined> => {
      const result = await ordered.next();
      if (result.done) return undefined;
      cursor++;
      return result.value;
    };
    const add = (item: Example): void => {
      const encoded = encodeExample(item, this.tokenizer, { maxSeqLength: this.options.packing ? undefined : this.options.maxSeqLength });
      if (encoded) rows.add(encoded, cursor - 1);
      else this.stats.train.dropped++;
    };

    // Closing the order on the way out (also when the caller stops early) closes the open file.
    try {
      if (resume) {
        // Replay the epoch's order to the saved cursor: skip what is already trained on, and
        // re-tokenize only the examples whose tokens were still pending.
        const stale = new DatasetError(
          `the saved data position (epoch ${epoch}, example ${resume.cursor}) is past the end of the data; ` +
            "has the dataset changed since the checkpoint?",
        );
        while (cursor < resume.cursor - resume.pendingRecords) if ((await next()) === undefined) throw stale;
        while (cursor < resume.cursor) {
          const item = await next();
          if (item === undefined) throw stale;
          add(item);
        }
        rows.dropFirst(resume.pendingOffset);
      }

      let yielded = false;
      for (let item = await next(); item !== undefined; item = await next()) {
        add(item);
        while (rows.available >= batchSize) {
          yielded = true;
          yield this.batch(rows.take(batchSize), epoch, this.positionAt(epoch, rngStart, cursor, rows.pending()));
        }
      }
      const rest = rows.flush();
      if (rest.length > 0) {
        yielded = true;
        yield this.batch(rest, epoch, this.positionAt(epoch + 1, epochRng(this.options.seed, epoch + 1).state(), 0, undefined));
      }
      // A resumed epoch may rightly have nothing left; a whole one must have something.
      if (!yielded && !resume) {
        throw new DatasetError(
          `no training examples in ${this.files.train.map((key) => objectUri(this.files.store, key)).join(", ")} ` +
            `(${this.stats.train.lines} lines, ${this.stats.train.badLines} bad, ` +
            `${this.stats.train.dropped} without a token to learn within maxSeqLength)`,
        );
      }
    } finally {
      await ordered.return(undefined);
    }
  }

  /** One pass over the eval data in file order, in batches of `batchSize` rows; nothing when there is no eval data. */
  async *evalBatches(batchSize: number): AsyncGenerator<BatchData> {
    checkBatchSize(batchSize);
    if (!this.hasEval) return;
    this.stats.eval = emptyStats();
    const counter = new BadLineCounter(this.options, "eval data", (badLine) => this.hooks.onBadLine?.(badLine, "eval"));
    const fromTrain = this.files.eval === undefined;
    const examples = this.examples(
      this.files.eval ?? this.files.train,
      (key, line) => !fromTrain || isEvalLine(this.options.seed, key, line, this.options.evalFraction),
      counter,
      this.stats.eval,
    );
    const rows = this.assembler();
    let record = 0;
    for await (const item of examples) {
      const encoded = encodeExample(item, this.tokenizer, { maxSeqLength: this.options.packing ? undefined : this.options.maxSeqLength });
      if (encoded) rows.add(encoded, record++);
      else this.stats.eval.dropped++;
      while (rows.available >= batchSize) yield this.collate(rows.take(batchSize));
    }
    const rest = rows.flush();
    for (let i = 0; i < rest.length; i += batchSize) yield this.collate(rest.slice(i, i + batchSize));
  }

  /** The examples of `keys` in file order, for the lines `belongs` accepts; bad lines go to the counter. */
  private async *examples(
    keys: readonly string[],
    belongs: (key: string, line: number) => boolean,
    counter: BadLineCounter,
    stats: PassStats,
  ): AsyncGenerator<Example> {
    for (const key of keys) {
      const file = objectUri(this.files.store, key);
      const stream = await this.files.store.getStream(key);
      for await (const source of readLines(stream, this.options.maxLineBytes)) {
        if (isBlankLine(source) || !belongs(key, source.line)) continue;
        counter.read();
        stats.lines++;
        const result = parseSourceLine(source, this.context, this.options.maxLineBytes);
        if (result.example) {
          stats.examples++;
          yield result.example;
        } else {
          stats.badLines++;
          counter.report({ file, line: source.line, problem: result.problem });
        }
      }
    }
    counter.finish();
  }

  private assembler(): RowAssembler {
    return this.options.packing ? new Packer(this.options.maxSeqLength, this.tokenizer.eosId as number) : new RowQueue();
  }

  private collate(rows: Row[]): BatchData {
    const pad = this.tokenizer.padId ?? this.tokenizer.eosId ?? 0;
    const fixed = this.options.packing || this.options.padding === "maxSeqLength" ? this.options.maxSeqLength : undefined;
    return collate(rows, pad, fixed);
  }

  private batch(rows: Row[], epoch: number, position: DataPosition): Batch {
    return { ...this.collate(rows), epoch, position };
  }

  private positionAt(epoch: number, rng: number[], cursor: number, pending: { record: number; offset: number } | undefined): DataPosition {
    return {
      epoch,
      cursor,
      pendingRecords: pending ? cursor - pending.record : 0,
      pendingOffset: pending?.offset ?? 0,
      rng: [...rng],
      fingerprint: this.fingerprint,
    };
  }

  private checkPosition(position: DataPosition): void {
    const integer = (value: unknown): boolean => Number.isInteger(value) && (value as number) >= 0;
    if (
      !integer(position.epoch) ||
      !integer(position.cursor) ||
      !integer(position.pendingRecords) ||
      !integer(position.pendingOffset) ||
      position.pendingRecords > position.cursor
    ) {
      throw new Error(`invalid data position ${JSON.stringify(position)}`);
    }
    Rng.fromState(position.rng);
    if (position.fingerprint !== this.fingerprint) {
      throw new DatasetError(
        "the saved data position was made with other dataset settings or files " +
          "(format, fields, maxSeqLength, packing, seed, shuffle, evalFraction, train files or tokenizer); " +
          "resume with the same settings, or start the data from the beginning",
      );
    }
  }
}

/** What the dataset options need from the tokenizer that it lacks, if anything. */
export function tokenizerMismatch(options: Pick<ResolvedDatasetOptions, "format" | "packing">, tokenizer: Tokenizer): string | undefined {
  const needsEos = options.format !== "chat" && options.format !== "classification";
  if ((needsEos || options.packing) && tokenizer.eosId === undefined) {
    const what = `the ${options.format} format${options.packing ? " with packing" : ""}`;
    return `${what} needs an EOS token, and the tokenizer has none (set eos_token in tokenizer_config.json)`;
  }
  if (options.format === "chat" && tokenizer.chatTemplate === undefined) {
    return (
      "the chat format needs the model's chat template, and its tokenizer has none " +
      "(chat_template in tokenizer_config.json, or chat_template.jinja)"
    );
  }
  return undefined;
}

function emptyStats(): PassStats {
  return { lines: 0, badLines: 0, examples: 0, dropped: 0 };
}

function checkBatchSize(batchSize: number): void {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
}
