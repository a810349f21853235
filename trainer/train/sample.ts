import * as tf from "@tensorflow/tfjs-core";
import { IGNORE_INDEX } from "../data/encode.ts";
import type { Adapter } from "../methods/method.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";

/**
 * Greedy decoding, for the before/after sample a run prints: the most likely next token,
 * appended, until EOS or maxNewTokens. Without a key/value cache each token re-runs the whole
 * sequence, which is fine for the few dozen tokens of a sample.
 */
export function greedyDecode(
  adapter: Adapter,
  promptIds: readonly number[],
  options: { maxNewTokens: number; eosId?: number; maxLength: number; disableAdapters?: boolean },
): number[] {
  const ids = [...promptIds];
  const generated: number[] = [];
  while (generated.length < options.maxNewTokens && ids.length < options.maxLength) {
    const next = tf.tidy(() => {
      const logits = adapter.forward({ inputIds: tf.tensor2d(ids, [1, ids.length], "int32"), disableAdapters: options.disableAdapters ?? false });
      const last = tf.slice(logits, [0, ids.length - 1, 0], [1, 1, -1]);
      return tf.argMax(tf.reshape(last, [-1])).dataSync()[0]!;
    });
    if (next === options.eosId) break;
    ids.push(next);
    generated.push(next);
  }
  return generated;
}

/** The prompt of a training row: its tokens before the first one with a loss. */
export function promptOf(inputIds: ArrayLike<number>, labels: ArrayLike<number>, length: number): number[] {
  const prompt: number[] = [];
  for (let i = 0; i < length && labels[i] === IGNORE_INDEX; i++) prompt.push(inputIds[i]!);
  return prompt;
}

/** The greedy continuation of `promptIds` as text, by the adapter or (disableAdapters) the model under it. */
export function continuation(
  adapter: Adapter,
  tokenizer: Tokenizer,
  promptIds: readonly number[],
  options: { maxNewTokens?: number; maxLength: number; disableAdapters?: boolean },
): string {
  const ids = greedyDecode(adapter, promptIds, {
    maxNewTokens: options.maxNewTokens ?? 32,
    maxLength: options.maxLength,
    disableAdapters: options.disableAdapters ?? false,
    ...(tokenizer.eosId === undefined ? {} : { eosId: tokenizer.eosId }),
  });
  return tokenizer.decode(ids, { skipSpecialTokens: true });
}

/**
 * The base model's and the adapter's greedy continuation of `promptIds`, as text. `base`, when
 * given, is the base model's, decoded before training: full fine-tuning changes the base weights
 * themselves, so disabling adapters after training would not give the base model back.
 */
export function sampleBeforeAfter(
  adapter: Adapter,
  tokenizer: Tokenizer,
  promptIds: readonly number[],
  options: { maxNewTokens?: number; maxLength: number; base?: string },
): { prompt: string; base: string; adapter: string } {
  return {
    prompt: tokenizer.decode([...promptIds], { skipSpecialTokens: true }),
    base: options.base ?? continuation(adapter, tokenizer, promptIds, { ...options, disableAdapters: true }),
    adapter: continuation(adapter, tokenizer, promptIds, options),
  };
}
