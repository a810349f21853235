import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import type { Example, TextSegment } from "./records.ts";

/** The label of a position that carries no loss (prompt, padding, a user turn), as in PyTorch and Hugging Face. */
export const IGNORE_INDEX = -100;

/**
 * Token ids and their labels. labels[i] is inputIds[i] where the model is trained to produce
 * that token and IGNORE_INDEX elsewhere. Labels are not shifted: as in Hugging Face, the loss
 * predicts labels[i + 1] from the positions up to i.
 */
export interface TokenSequence {
  inputIds: number[];
  labels: number[];
}

export type EncodedExample =
  | { kind: "lm"; sequence: TokenSequence }
  | { kind: "preference"; chosen: TokenSequence; rejected: TokenSequence }
  | { kind: "classification"; inputIds: number[]; label: number };

export interface EncodeOptions {
  /** Cut sequences to this many tokens; packing passes undefined and cuts blocks instead. */
  maxSeqLength: number | undefined;
}

/**
 * Tokenizes an example. Segments are tokenized one by one, so that each token's label comes
 * from exactly one segment. `special` examples get the tokenizer's BOS (when it adds one; no
 * loss, nothing predicts it) and EOS (with loss, so the model learns to stop).
 * Returns undefined when truncation left no token with a loss: such an example teaches nothing.
 */
export function encodeExample(example: Example, tokenizer: Tokenizer, options: EncodeOptions): EncodedExample | undefined {
  switch (example.kind) {
    case "lm": {
      const sequence = truncate(encodeSegments(example.segments, example.special, tokenizer), options.maxSeqLength);
      return hasLoss(sequence) ? { kind: "lm", sequence } : undefined;
    }
    case "preference": {
      const prompt = { text: example.prompt, loss: false };
      const chosen = truncate(encodeSegments([prompt, { text: example.chosen, loss: true }], true, tokenizer), options.maxSeqLength);
      const rejected = truncate(encodeSegments([prompt, { text: example.rejected, loss: true }], true, tokenizer), options.maxSeqLength);
      return hasLoss(chosen) && hasLoss(rejected) ? { kind: "preference", chosen, rejected } : undefined;
    }
    case "classification": {
      const ids = [...bos(tokenizer), ...tokenizer.encode(example.text)];
      return { kind: "classification", inputIds: cut(ids, options.maxSeqLength), label: example.label };
    }
  }
}

function encodeSegments(segments: readonly TextSegment[], special: boolean, tokenizer: Tokenizer): TokenSequence {
  const inputIds = special ? bos(tokenizer) : [];
  const labels = inputIds.map(() => IGNORE_INDEX);
  for (const segment of segments) {
    for (const id of tokenizer.encode(segment.text)) {
      inputIds.push(id);
      labels.push(segment.loss ? id : IGNORE_INDEX);
    }
  }
  if (special) {
    const eos = tokenizer.eosId as number;
    inputIds.push(eos);
    labels.push(eos);
  }
  return { inputIds, labels };
}

function bos(tokenizer: Tokenizer): number[] {
  return tokenizer.addBos && tokenizer.bosId !== undefined ? [tokenizer.bosId] : [];
}

function truncate(sequence: TokenSequence, maxSeqLength: number | undefined): TokenSequence {
  return { inputIds: cut(sequence.inputIds, maxSeqLength), labels: cut(sequence.labels, maxSeqLength) };
}

function cut(ids: number[], maxSeqLength: number | undefined): number[] {
  return maxSeqLength === undefined || ids.length <= maxSeqLength ? ids : ids.slice(0, maxSeqLength);
}

function hasLoss(sequence: TokenSequence): boolean {
  return sequence.labels.some((label) => label !== IGNORE_INDEX);
}
