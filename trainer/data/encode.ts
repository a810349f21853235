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
 * Tokenizes an example. Its segments are joined and the whole text is tokenized once, as
 * inference tokenizes a prompt followed by what the model wrote: tokenizing the segments one by
 * one would start each with a word boundary that the whole text does not have under
 * SentencePiece-style tokenizers (Llama-2, Mistral), whose normalizer prepends "▁" to a text.
 * The loss mask comes from the segments' character spans (lossMask). `special` examples get the
 * tokenizer's BOS (when it adds one; no loss, nothing predicts it) and EOS (with loss, so the
 * model learns to stop).
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
      // A chat template's reply ends in its end-of-turn token and then whitespace between turns,
      // which carries no loss, as in the chat format (records.ts).
      const completion = (text: string): TextSegment[] =>
        example.chat ? [{ text: text.trimEnd(), loss: true }, { text: text.slice(text.trimEnd().length), loss: false }].filter((segment) => segment.text !== "") : [{ text, loss: true }];
      const encode = (text: string) => truncate(encodeSegments([prompt, ...completion(text)], !example.chat, tokenizer), options.maxSeqLength);
      const chosen = encode(example.chosen);
      const rejected = encode(example.rejected);
      return hasLoss(chosen) && hasLoss(rejected) ? { kind: "preference", chosen, rejected } : undefined;
    }
    case "classification": {
      const ids = [...bos(tokenizer), ...tokenizer.encode(example.text)];
      return { kind: "classification", inputIds: cut(ids, options.maxSeqLength), label: example.label };
    }
  }
}

function encodeSegments(segments: readonly TextSegment[], special: boolean, tokenizer: Tokenizer): TokenSequence {
  const text = segments.map((segment) => segment.text).join("");
  const ids = tokenizer.encode(text);
  const mask = lossMask(segments, text, ids, tokenizer);
  const start = special ? bos(tokenizer) : [];
  const inputIds = [...start, ...ids];
  const labels = [...start.map(() => IGNORE_INDEX), ...ids.map((id, i) => (mask[i] ? id : IGNORE_INDEX))];
  if (special) {
    const eos = tokenizer.eosId as number;
    inputIds.push(eos);
    labels.push(eos);
  }
  return { inputIds, labels };
}

/**
 * Which tokens of `ids` (the whole of `text`) carry a loss: those that hold a character of a
 * loss segment. The tokenizer library (@huggingface/tokenizers 0.2) returns no character
 * offsets, so each boundary between a segment without loss and one with it is located by
 * tokenizing the text up to it (tokenBoundary). A token that spans a boundary holds characters
 * the model must produce, so it carries the loss.
 */
function lossMask(segments: readonly TextSegment[], text: string, ids: readonly number[], tokenizer: Tokenizer): boolean[] {
  const mask = ids.map(() => false);
  let offset = 0;
  let runStart: number | undefined;
  const closeRun = (end: number): void => {
    if (runStart === undefined) return;
    const from = tokenBoundary(text, runStart, ids, tokenizer).before;
    const to = tokenBoundary(text, end, ids, tokenizer).after;
    for (let i = from; i < to; i++) mask[i] = true;
    runStart = undefined;
  };
  for (const segment of segments) {
    if (segment.loss) runStart ??= offset;
    else closeRun(offset);
    offset += segment.text.length;
  }
  closeRun(offset);
  return mask;
}

/**
 * Where character `position` of `text` falls among the tokens `ids` of the whole text: the
 * tokens before `before` lie wholly before it, those from `after` on wholly after it; between
 * the two are tokens that span it (none when the position falls between two tokens).
 * The tokens of text[0, position) that agree with the whole text's lie before the position; when
 * they all agree, the position is a token boundary. Otherwise the tokens of text[position, end)
 * that agree with the end of the whole text's, counted from the end, lie after it (the first of
 * them may differ, as a prepended "▁" does, which only widens the span).
 */
function tokenBoundary(text: string, position: number, ids: readonly number[], tokenizer: Tokenizer): { before: number; after: number } {
  if (position <= 0) return { before: 0, after: 0 };
  if (position >= text.length) return { before: ids.length, after: ids.length };
  const head = tokenizer.encode(text.slice(0, position));
  let before = 0;
  while (before < head.length && before < ids.length && head[before] === ids[before]) before++;
  if (before === head.length) return { before, after: before };
  const tail = tokenizer.encode(text.slice(position));
  let common = 0;
  while (common < tail.length && ids.length - common > before && tail[tail.length - 1 - common] === ids[ids.length - 1 - common]) common++;
  return { before, after: ids.length - common };
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
