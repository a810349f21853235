import * as tf from "@tensorflow/tfjs-core";
import type { Adapter } from "../methods/method.ts";
import type { KeyValuePrefix, ModelInputs } from "../model/model.ts";
import type { Rng } from "../random.ts";

/**
 * Text generation on the trainer's own model code and backend, with a key/value cache: the
 * prompt is run once (CausalLM.keyValues gives each layer's keys and values after the rotary
 * embedding, exactly what attention attends over), then each step runs only the newest token,
 * with the cache as pastKeyValuesPrefix, and appends that token's keys and values to it.
 *
 * Several samples of one prompt are generated as one batch: every row has the same prompt, so no
 * row is padded, and every row's positions are the prefix length plus its index, which is what
 * the model gives inputs after a pastKeyValuesPrefix. (Rows of different prompts would need left
 * padding, and the model numbers positions from the first column, pad or not: a left-padded row
 * would be placed further along than its own tokens, unlike Hugging Face's position_ids from the
 * mask. Batching the samples of one prompt avoids that rather than approximating it.) A row that
 * has produced EOS keeps running with the others until all are done, its later tokens dropped.
 *
 * Prompt and prefix tuning's virtual tokens are the cache's first positions (Adapter.keyValues:
 * prefix tuning's trained keys and values, prompt tuning's embeddings run through the model), so
 * the prompt's positions follow them as in the adapter's own forward pass.
 */
export interface GenerationOptions {
  /** Rows to sample, all continuing the same prompt. */
  samples: number;
  /** Tokens to generate at most per row (EOS excluded). */
  maxNewTokens: number;
  /** 0 decodes greedily (the most likely token, the first on a tie, as argMax); otherwise logits are divided by it. */
  temperature: number;
  /** Nucleus sampling: only the most likely tokens whose probabilities sum to topP are kept (1 keeps all). */
  topP: number;
  /** Generation of a row stops at this token, which is not part of its output. */
  eosId?: number;
  /**
   * The most tokens (prompt and generated) a row may hold. Virtual tokens (prompt and prefix
   * tuning) are not counted: a caller bound by positions, such as GPT-2's n_positions, subtracts them.
   */
  maxLength?: number;
  /** Generate with the base model alone (the adapter disabled). */
  disableAdapters?: boolean;
  /** Draws the samples; required when temperature > 0. Its state advances by one draw per row and step. */
  rng?: Rng;
}

/** Each row's generated token ids (EOS excluded). */
export function generate(adapter: Adapter, promptIds: readonly number[], options: GenerationOptions): number[][] {
  checkOptions(options);
  if (promptIds.length === 0) throw new Error("generate: the prompt has no tokens");
  const model = adapter.model;
  const disableAdapters = options.disableAdapters ?? false;
  const rows = options.samples;
  const limit = Math.min(options.maxNewTokens, options.maxLength === undefined ? Infinity : options.maxLength - promptIds.length);
  const outputs: number[][] = Array.from({ length: rows }, () => []);
  if (limit <= 0) return outputs;
  const done = new Array<boolean>(rows).fill(false);
  // Prompt and prefix tuning place virtual tokens before the input: their keys and values come
  // from the adapter (Adapter.keyValues), and are the cache's first positions. Every other
  // method changes the model's own modules, which model.keyValues runs through.
  const keyValues = (inputs: ModelInputs) => (adapter.keyValues && !disableAdapters ? adapter.keyValues(inputs) : model.keyValues(inputs));

  // The prompt but its last token fills the cache (batch 1: withPrefix tiles it over the rows);
  // the last token is the first step's input, whose logits give the first generated token. A
  // one-token prompt has no lead: the cache is then the virtual tokens' alone (none without them).
  let cache: KeyValuePrefix[] | undefined;
  if (promptIds.length > 1) {
    const lead = tf.tensor2d(promptIds.slice(0, -1), [1, promptIds.length - 1], "int32");
    try {
      cache = keyValues({ inputIds: lead, disableAdapters });
    } finally {
      lead.dispose();
    }
  } else if (adapter.keyValues && !disableAdapters && adapter.virtualTokens) {
    cache = virtualOnly(adapter, keyValues);
  }
  let next: number[] = new Array<number>(rows).fill(promptIds.at(-1)!);
  try {
    for (let step = 0; step < limit; step++) {
      const inputs = { inputIds: tf.tensor2d(next, [rows, 1], "int32"), disableAdapters, ...(cache ? { pastKeyValuesPrefix: cache } : {}) };
      const logits = tf.tidy(() => tf.reshape(model.forward(inputs), [rows, -1]).dataSync() as Float32Array);
      const last = step + 1 === limit;
      // The cache is extended only when another step will read it.
      const extended = last ? undefined : model.keyValues(inputs);
      inputs.inputIds.dispose();
      if (cache) for (const { key, value } of cache) tf.dispose([key, value]);
      cache = extended;
      const vocab = logits.length / rows;
      next = Array.from({ length: rows }, (_, row) => pickToken(logits.subarray(row * vocab, (row + 1) * vocab), options));
      next.forEach((token, row) => {
        if (done[row]) return;
        if (token === options.eosId) done[row] = true;
        else outputs[row]!.push(token);
      });
      if (done.every(Boolean)) break;
    }
  } finally {
    if (cache) for (const { key, value } of cache) tf.dispose([key, value]);
  }
  return outputs;
}

/**
 * The virtual tokens' own keys and values, for a prompt of one token: the cache of a one-token
 * input, cut before that token's position (the virtual positions come first and, causally, do
 * not depend on what follows them).
 */
function virtualOnly(adapter: Adapter, keyValues: (inputs: ModelInputs) => KeyValuePrefix[]): KeyValuePrefix[] {
  const virtual = adapter.virtualTokens!;
  const probe = tf.tensor2d([0], [1, 1], "int32");
  let whole: KeyValuePrefix[] = [];
  try {
    whole = keyValues({ inputIds: probe });
    return whole.map(({ key, value }) => {
      const cut = (tensor: tf.Tensor4D) => tf.slice(tensor, [0, 0, 0, 0], [-1, -1, virtual, -1]);
      return { key: cut(key), value: cut(value) };
    });
  } finally {
    probe.dispose();
    for (const { key, value } of whole) tf.dispose([key, value]);
  }
}

/**
 * The same tokens without a cache: each step runs the whole sequence through adapter.forward.
 * Slow (quadratic in the length); the reference the cached generator is tested against.
 */
export function generateUncached(adapter: Adapter, promptIds: readonly number[], options: GenerationOptions): number[][] {
  checkOptions(options);
  const rows = options.samples;
  const limit = Math.min(options.maxNewTokens, options.maxLength === undefined ? Infinity : options.maxLength - promptIds.length);
  const sequences = Array.from({ length: rows }, () => [...promptIds]);
  const outputs: number[][] = Array.from({ length: rows }, () => []);
  const done = new Array<boolean>(rows).fill(false);
  for (let step = 0; step < limit && !done.every(Boolean); step++) {
    const length = sequences[0]!.length;
    const logits = tf.tidy(() => {
      const all = adapter.forward({ inputIds: tf.tensor2d(sequences.flat(), [rows, length], "int32"), disableAdapters: options.disableAdapters ?? false });
      return tf.reshape(tf.slice(all, [0, length - 1, 0], [rows, 1, -1]), [rows, -1]).dataSync() as Float32Array;
    });
    const vocab = logits.length / rows;
    sequences.forEach((sequence, row) => {
      const token = pickToken(logits.subarray(row * vocab, (row + 1) * vocab), options);
      sequence.push(token);
      if (done[row]) return;
      if (token === options.eosId) done[row] = true;
      else outputs[row]!.push(token);
    });
  }
  return outputs;
}

function checkOptions(options: GenerationOptions): void {
  if (!Number.isInteger(options.samples) || options.samples < 1) throw new Error(`generate: samples must be a positive integer, got ${options.samples}`);
  if (!Number.isInteger(options.maxNewTokens) || options.maxNewTokens < 1) throw new Error(`generate: maxNewTokens must be a positive integer, got ${options.maxNewTokens}`);
  if (!(options.temperature >= 0) || !Number.isFinite(options.temperature)) throw new Error(`generate: temperature must be 0 or more, got ${options.temperature}`);
  if (!(options.topP > 0 && options.topP <= 1)) throw new Error(`generate: topP must be above 0 and at most 1, got ${options.topP}`);
  if (options.temperature > 0 && !options.rng) throw new Error("generate: sampling (temperature > 0) needs a random generator");
}

/** The next token from one row's logits: argMax at temperature 0, else a draw from samplingDistribution. */
export function pickToken(logits: ArrayLike<number>, options: Pick<GenerationOptions, "temperature" | "topP" | "rng">): number {
  if (options.temperature === 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  const { tokens, probabilities } = samplingDistribution(logits, options.temperature, options.topP);
  const u = options.rng!.nextFloat();
  let cumulative = 0;
  for (let i = 0; i < tokens.length; i++) {
    cumulative += probabilities[i]!;
    if (u < cumulative) return tokens[i]!;
  }
  return tokens.at(-1)!;
}

/**
 * The tokens that may be drawn and their probabilities, as transformers' TemperatureLogitsWarper
 * then TopPLogitsWarper give them: softmax(logits / temperature) in float64, then, most likely
 * first, the fewest tokens whose probabilities reach topP (at least one; a token tied with the
 * last kept is cut by order, as a stable sort leaves it), renormalised.
 */
export function samplingDistribution(logits: ArrayLike<number>, temperature: number, topP: number): { tokens: number[]; probabilities: number[] } {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  const weights = Array.from({ length: logits.length }, (_, i) => Math.exp((logits[i]! - max) / temperature));
  const total = weights.reduce((sum, w) => sum + w, 0);
  const order = weights.map((_, i) => i).sort((a, b) => weights[b]! - weights[a]! || a - b);
  const tokens: number[] = [];
  let kept = 0;
  for (const token of order) {
    tokens.push(token);
    kept += weights[token]! / total;
    if (kept >= topP) break;
  }
  const keptWeight = tokens.reduce((sum, token) => sum + weights[token]!, 0);
  return { tokens, probabilities: tokens.map((token) => weights[token]! / keptWeight) };
}
