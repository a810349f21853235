import { IGNORE_INDEX } from "../data/encode.ts";
import { generate } from "../generate/generate.ts";
import type { Adapter } from "../methods/method.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";

/**
 * Greedy decoding, for the before/after sample a run prints: the most likely next token,
 * appended, until EOS, maxNewTokens, or maxLength tokens in all (prompt included, virtual tokens
 * not). It runs on trainer/generate's key/value cache, so each token costs one position's pass.
 */
export function greedyDecode(
  adapter: Adapter,
  promptIds: readonly number[],
  options: { maxNewTokens: number; eosId?: number; maxLength: number; disableAdapters?: boolean },
): number[] {
  if (promptIds.length === 0 || options.maxNewTokens < 1) return [];
  const [row] = generate(adapter, promptIds, {
    samples: 1,
    maxNewTokens: options.maxNewTokens,
    temperature: 0,
    topP: 1,
    maxLength: options.maxLength,
    disableAdapters: options.disableAdapters ?? false,
    ...(options.eosId === undefined ? {} : { eosId: options.eosId }),
  });
  return row!;
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
