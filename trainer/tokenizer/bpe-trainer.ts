/**
 * A small byte-level BPE trainer and a writer of the tokenizer.json that Hugging Face
 * tokenizers (Rust, Python and @huggingface/tokenizers) load. It exists for the quickstart,
 * whose few-MB model needs a tokenizer made by a script from redistributable text; it is
 * simple rather than fast (seconds for a few MB of text and a few thousand merges).
 *
 * Byte-level means GPT-2's scheme: text is split into words by GPT-2's pattern, each word's
 * UTF-8 bytes are written as 256 printable characters, and merges join adjacent symbols.
 * Every byte is in the base vocabulary, so any text encodes without an unknown token and
 * decodes back exactly.
 */

/** GPT-2's pre-tokenization pattern, the one the ByteLevel pre-tokenizer applies with use_regex. */
const GPT2_WORD_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/**
 * GPT-2's map from bytes to printable characters: printable Latin-1 bytes stand for
 * themselves, the others (controls, space, ...) for the characters from U+0100 on.
 */
const BYTE_TO_CHAR: readonly string[] = (() => {
  const printable = (byte: number): boolean =>
    (byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || (byte >= 0xae && byte <= 0xff);
  const chars: string[] = [];
  let next = 0;
  for (let byte = 0; byte < 256; byte++) chars.push(String.fromCodePoint(printable(byte) ? byte : 256 + next++));
  return chars;
})();

export interface BpeTrainingOptions {
  /** The vocabulary size to reach: special tokens + 256 bytes + merges. */
  vocabSize: number;
  /** Special tokens, given ids 0, 1, ... in this order (e.g. ["<|endoftext|>", "<|pad|>"]). */
  specialTokens?: readonly string[];
  /** A pair is merged only if it occurs at least this often (default 2); training may stop short of vocabSize. */
  minFrequency?: number;
}

/** A trained byte-level BPE model: tokens by id and merges in rank order. */
export interface BpeModel {
  /** Every token by id: the special tokens, the 256 byte characters, then one token per merge. */
  tokens: string[];
  /** Merged pairs, highest priority first. */
  merges: [string, string][];
  specialTokens: string[];
}

/**
 * Learns BPE merges from `texts`: count every adjacent symbol pair over all words (weighted
 * by how often the word occurs), merge the most frequent pair everywhere, repeat. Ties go to
 * the pair of the earlier-made symbols, so the result depends only on the input.
 */
export function trainByteLevelBpe(texts: Iterable<string>, options: BpeTrainingOptions): BpeModel {
  const specialTokens = [...(options.specialTokens ?? [])];
  const minFrequency = options.minFrequency ?? 2;
  const baseSize = specialTokens.length + 256;
  if (!Number.isInteger(options.vocabSize) || options.vocabSize < baseSize) {
    throw new Error(`vocabSize must be an integer of at least ${baseSize} (special tokens + 256 bytes), got ${options.vocabSize}`);
  }
  if (new Set(specialTokens).size !== specialTokens.length) throw new Error("special tokens must be distinct");

  const wordCounts = new Map<string, number>();
  const encoder = new TextEncoder();
  for (const text of texts) {
    // Special tokens are matched before BPE runs, so they never take part in a word.
    for (const piece of splitOut(text, specialTokens)) {
      for (const word of piece.match(GPT2_WORD_PATTERN) ?? []) wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
    }
  }
  // Symbols are numbered: 0..255 the bytes, 256.. the tokens that merges make, in order.
  const symbols: string[] = [...BYTE_TO_CHAR];
  const symbolIds = new Map(symbols.map((symbol, id) => [symbol, id]));
  const words: number[][] = [];
  const counts: number[] = [];
  for (const [word, count] of wordCounts) {
    words.push(Array.from(encoder.encode(word)));
    counts.push(count);
  }

  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const heap = new PairHeap();
  const changed = new Set<number>();
  const addPairs = (index: number, sign: 1 | -1): void => {
    const word = words[index] as number[];
    const count = (counts[index] as number) * sign;
    for (let i = 0; i + 1 < word.length; i++) {
      const key = pairKey(word[i] as number, word[i + 1] as number);
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + count);
      changed.add(key);
      if (sign === 1) {
        let holders = pairWords.get(key);
        if (!holders) pairWords.set(key, (holders = new Set()));
        holders.add(index);
      }
    }
  };
  const pushChanged = (): void => {
    for (const key of changed) {
      const count = pairCounts.get(key) ?? 0;
      if (count > 0) heap.push(count, key);
    }
    changed.clear();
  };
  for (let index = 0; index < words.length; index++) addPairs(index, 1);
  pushChanged();

  const merges: [string, string][] = [];
  while (specialTokens.length + symbols.length < options.vocabSize) {
    const best = popCurrent(heap, pairCounts);
    if (best === undefined || best.count < minFrequency) break;
    const [left, right] = unpairKey(best.key);
    const text = (symbols[left] as string) + (symbols[right] as string);
    // Two merge paths can make the same string ("ab"+"c", "a"+"bc"); both merges lead to one token.
    let merged = symbolIds.get(text);
    if (merged === undefined) {
      merged = symbols.length;
      symbols.push(text);
      symbolIds.set(text, merged);
    }
    merges.push([symbols[left] as string, symbols[right] as string]);
    for (const index of pairWords.get(best.key) ?? []) {
      addPairs(index, -1);
      words[index] = mergeWord(words[index] as number[], left, right, merged);
      addPairs(index, 1);
    }
    pairWords.delete(best.key);
    pairCounts.delete(best.key);
    changed.delete(best.key);
    pushChanged();
  }

  return { tokens: [...specialTokens, ...symbols], merges, specialTokens };
}

export interface TokenizerJsonOptions {
  /** Prepend this special token to every encoded text (a TemplateProcessing post-processor), as Llama does. */
  bosToken?: string;
}

/** The tokenizer.json of a trained byte-level BPE model, in the layout Hugging Face tokenizers write. */
export function byteLevelBpeTokenizerJson(model: BpeModel, options: TokenizerJsonOptions = {}): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  model.tokens.forEach((token, id) => {
    if (Object.hasOwn(vocab, token)) throw new Error(`token ${JSON.stringify(token)} appears twice in the vocabulary`);
    vocab[token] = id;
  });
  const addedTokens = model.specialTokens.map((content) => ({
    id: vocab[content],
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  let postProcessor: Record<string, unknown> = { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true };
  if (options.bosToken !== undefined) {
    const bosId = vocab[options.bosToken];
    if (bosId === undefined || !model.specialTokens.includes(options.bosToken)) {
      throw new Error(`bosToken ${JSON.stringify(options.bosToken)} must be one of the special tokens`);
    }
    const bos = { SpecialToken: { id: options.bosToken, type_id: 0 } };
    postProcessor = {
      type: "TemplateProcessing",
      single: [bos, { Sequence: { id: "A", type_id: 0 } }],
      pair: [bos, { Sequence: { id: "A", type_id: 0 } }, bos, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { [options.bosToken]: { id: options.bosToken, ids: [bosId], tokens: [options.bosToken] } },
    };
  }
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: postProcessor,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      // "left right" strings: every reader accepts them, and byte-level symbols hold no spaces.
      merges: model.merges.map(([left, right]) => `${left} ${right}`),
    },
  };
}

export interface TokenizerConfigOptions {
  bosToken?: string;
  eosToken: string;
  padToken?: string;
  /** Whether encoded texts start with BOS; must match byteLevelBpeTokenizerJson's bosToken. */
  addBosToken?: boolean;
  chatTemplate?: string;
  modelMaxLength?: number;
}

/** A tokenizer_config.json to go with a tokenizer.json made here. */
export function tokenizerConfigJson(options: TokenizerConfigOptions): Record<string, unknown> {
  return {
    tokenizer_class: "PreTrainedTokenizerFast",
    bos_token: options.bosToken ?? null,
    eos_token: options.eosToken,
    pad_token: options.padToken ?? null,
    unk_token: null,
    add_bos_token: options.addBosToken ?? false,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: options.modelMaxLength ?? 1024,
    ...(options.chatTemplate === undefined ? {} : { chat_template: options.chatTemplate }),
  };
}

function splitOut(text: string, specialTokens: readonly string[]): string[] {
  let pieces = [text];
  for (const token of specialTokens) pieces = pieces.flatMap((piece) => piece.split(token));
  return pieces;
}

/** Symbol ids stay below 2^21, so a pair fits exactly in a double. */
const PAIR_BASE = 2 ** 21;

function pairKey(left: number, right: number): number {
  return left * PAIR_BASE + right;
}

function unpairKey(key: number): [number, number] {
  return [Math.floor(key / PAIR_BASE), key % PAIR_BASE];
}

function mergeWord(word: number[], left: number, right: number, merged: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < word.length; i++) {
    if (word[i] === left && word[i + 1] === right) {
      out.push(merged);
      i++;
    } else {
      out.push(word[i] as number);
    }
  }
  return out;
}

/** Pops heap entries until one whose count is still current (counts change after each merge; stale entries stay behind). */
function popCurrent(heap: PairHeap, pairCounts: Map<number, number>): { count: number; key: number } | undefined {
  for (;;) {
    const top = heap.pop();
    if (top === undefined) return undefined;
    if (pairCounts.get(top.key) === top.count) return top;
  }
}

/** A binary max-heap of (count, pair) ordered by count, then by the smaller pair key. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.counts.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): { count: number; key: number } | undefined {
    if (this.counts.length === 0) return undefined;
    const top = { count: this.counts[0] as number, key: this.keys[0] as number };
    const lastCount = this.counts.pop() as number;
    const lastKey = this.keys.pop() as number;
    if (this.counts.length > 0) {
      this.counts[0] = lastCount;
      this.keys[0] = lastKey;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let best = i;
        if (left < this.counts.length && this.before(left, best)) best = left;
        if (right < this.counts.length && this.before(right, best)) best = right;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }

  private before(a: number, b: number): boolean {
    const countA = this.counts[a] as number;
    const countB = this.counts[b] as number;
    return countA > countB || (countA === countB && (this.keys[a] as number) < (this.keys[b] as number));
  }

  private swap(a: number, b: number): void {
    [this.counts[a], this.counts[b]] = [this.counts[b] as number, this.counts[a] as number];
    [this.keys[a], this.keys[b]] = [this.keys[b] as number, this.keys[a] as number];
  }
}
