import { IGNORE_INDEX, type EncodedExample, type TokenSequence } from "./encode.ts";

/**
 * A batch of token rows, row-major: row r is [r * seqLength, (r + 1) * seqLength).
 * Padding is on the right: attentionMask 0 and labels IGNORE_INDEX there.
 */
export interface TokenBatch {
  rows: number;
  seqLength: number;
  inputIds: Int32Array;
  attentionMask: Int32Array;
  labels: Int32Array;
}

/** The rows of one batch, by format: language modelling, DPO pairs, or classification. */
export type BatchData =
  | { kind: "lm"; tokens: TokenBatch }
  /** chosen and rejected have the same shape, so a trainer can stack them into one forward pass. */
  | { kind: "preference"; chosen: TokenBatch; rejected: TokenBatch }
  /** tokens.labels are all IGNORE_INDEX; the classes are in classLabels, one per row. */
  | { kind: "classification"; tokens: TokenBatch; classLabels: Int32Array };

/** One row of a batch: an encoded example, or a packed block of several (kind "lm"). */
export type Row = EncodedExample;

/**
 * Turns encoded examples into rows; `record` is the example's index in the epoch's order. What it holds but has not handed out is "pending": it
 * starts `offset` tokens into example `record`, and covers every example added after it.
 * A data position stores that, so a resumed loader can rebuild the same pending rows.
 */
export interface RowAssembler {
  add(example: EncodedExample, record: number): void;
  /** Complete rows ready to take. */
  readonly available: number;
  take(count: number): Row[];
  /** Every remaining row, the last one possibly short; at the end of an epoch. */
  flush(): Row[];
  pending(): { record: number; offset: number } | undefined;
  /** Drops the first `tokens` pending tokens: the part of a resumed example that was already handed out. */
  dropFirst(tokens: number): void;
}

/** One example, one row (sequences already cut to maxSeqLength). */
export class RowQueue implements RowAssembler {
  private readonly rows: { row: Row; record: number }[] = [];

  add(example: EncodedExample, record: number): void {
    this.rows.push({ row: example, record });
  }

  get available(): number {
    return this.rows.length;
  }

  take(count: number): Row[] {
    return this.rows.splice(0, count).map((entry) => entry.row);
  }

  flush(): Row[] {
    return this.take(this.rows.length);
  }

  pending(): { record: number; offset: number } | undefined {
    const first = this.rows[0];
    return first && { record: first.record, offset: 0 };
  }

  dropFirst(tokens: number): void {
    if (tokens !== 0) throw new Error(`unpacked rows cannot start part-way into an example (offset ${tokens})`);
  }
}

/**
 * Packing: examples are concatenated, each ending in EOS, and the stream is cut into rows of
 * exactly blockLength tokens, labels travelling with their tokens. An example may run across
 * rows; attention is not masked between the examples inside a row (as in Hugging Face and
 * TRL's default packing). A chat example that does not end in EOS gets one as a separator,
 * without loss, since the template's own end-of-turn token already ends the reply.
 */
export class Packer implements RowAssembler {
  private readonly chunks: { record: number; sequence: TokenSequence; offset: number }[] = [];
  private tokens = 0;

  constructor(
    private readonly blockLength: number,
    private readonly eosId: number,
  ) {}

  add(example: EncodedExample, record: number): void {
    if (example.kind !== "lm") throw new Error(`packing takes language-model examples, not ${example.kind}`);
    let sequence = example.sequence;
    if (sequence.inputIds.at(-1) !== this.eosId) {
      sequence = { inputIds: [...sequence.inputIds, this.eosId], labels: [...sequence.labels, IGNORE_INDEX] };
    }
    this.chunks.push({ record, sequence, offset: 0 });
    this.tokens += sequence.inputIds.length;
  }

  get available(): number {
    return Math.floor(this.tokens / this.blockLength);
  }

  take(count: number): Row[] {
    const rows: Row[] = [];
    for (let i = 0; i < count && this.tokens >= this.blockLength; i++) rows.push(this.cut(this.blockLength));
    return rows;
  }

  flush(): Row[] {
    const rows = this.take(this.available);
    if (this.tokens > 0) rows.push(this.cut(this.tokens));
    return rows;
  }

  pending(): { record: number; offset: number } | undefined {
    const first = this.chunks[0];
    return first && { record: first.record, offset: first.offset };
  }

  dropFirst(tokens: number): void {
    this.cut(tokens);
  }

  private cut(length: number): Row {
    if (length > this.tokens) throw new Error(`cannot cut ${length} tokens from ${this.tokens} pending`);
    const inputIds: number[] = [];
    const labels: number[] = [];
    while (inputIds.length < length) {
      const chunk = this.chunks[0] as { record: number; sequence: TokenSequence; offset: number };
      const end = Math.min(chunk.sequence.inputIds.length, chunk.offset + length - inputIds.length);
      for (let i = chunk.offset; i < end; i++) {
        inputIds.push(chunk.sequence.inputIds[i] as number);
        labels.push(chunk.sequence.labels[i] as number);
      }
      chunk.offset = end;
      if (end === chunk.sequence.inputIds.length) this.chunks.shift();
    }
    this.tokens -= length;
    return { kind: "lm", sequence: { inputIds, labels } };
  }
}

/** Pads rows into a batch: to seqLength when given, else to the longest row. */
export function collate(rows: readonly Row[], padId: number, seqLength: number | undefined): BatchData {
  const first = rows[0];
  if (!first) throw new Error("a batch needs at least one row");
  switch (first.kind) {
    case "lm":
      return { kind: "lm", tokens: tokenBatch(rows.map((row) => (row as typeof first).sequence), padId, seqLength) };
    case "preference": {
      const pairs = rows as Extract<Row, { kind: "preference" }>[];
      const sequences = pairs.flatMap((pair) => [pair.chosen, pair.rejected]);
      const length = seqLength ?? Math.max(...sequences.map((sequence) => sequence.inputIds.length));
      return {
        kind: "preference",
        chosen: tokenBatch(
          pairs.map((pair) => pair.chosen),
          padId,
          length,
        ),
        rejected: tokenBatch(
          pairs.map((pair) => pair.rejected),
          padId,
          length,
        ),
      };
    }
    case "classification": {
      const examples = rows as Extract<Row, { kind: "classification" }>[];
      return {
        kind: "classification",
        tokens: tokenBatch(
          examples.map((example) => ({ inputIds: example.inputIds, labels: example.inputIds.map(() => IGNORE_INDEX) })),
          padId,
          seqLength,
        ),
        classLabels: Int32Array.from(examples, (example) => example.label),
      };
    }
  }
}

function tokenBatch(sequences: readonly TokenSequence[], padId: number, seqLength: number | undefined): TokenBatch {
  const length = seqLength ?? Math.max(...sequences.map((sequence) => sequence.inputIds.length));
  const rows = sequences.length;
  const inputIds = new Int32Array(rows * length).fill(padId);
  const attentionMask = new Int32Array(rows * length);
  const labels = new Int32Array(rows * length).fill(IGNORE_INDEX);
  sequences.forEach((sequence, row) => {
    inputIds.set(sequence.inputIds, row * length);
    labels.set(sequence.labels, row * length);
    attentionMask.fill(1, row * length, row * length + sequence.inputIds.length);
  });
  return { rows, seqLength: length, inputIds, attentionMask, labels };
}
