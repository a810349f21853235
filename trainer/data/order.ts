import { Rng } from "../random.ts";

/**
 * The order of training examples and the eval split.
 *
 * Why a shuffle buffer: the object store reads whole objects as streams (no ranged reads), so
 * an index of line offsets could not be used to jump to a line, and a dataset larger than
 * memory cannot be held to shuffle. Each epoch therefore (1) permutes the order of the files
 * and (2) streams their examples through a buffer of shuffleBufferSize: once full, each new
 * example replaces a uniformly drawn one, which is emitted; at the end the rest is emitted in
 * a Fisher-Yates order. A dataset that fits in the buffer is shuffled uniformly; a larger one
 * is shuffled within a window of the buffer's size (split a large dataset into several files
 * so that step (1) mixes it on a larger scale).
 *
 * Both steps draw from one generator seeded from (seed, epoch), so an epoch's order is a pure
 * function of the seed, the epoch and the data. That is what makes resuming exact: a data
 * position stores the epoch, its generator's start state and how many examples were taken,
 * and a resumed loader replays the epoch's order up to there without tokenizing.
 */

/** A 32-bit hash of a string (FNV-1a, then MurmurHash3's finalizer to spread the bits). */
export function hash32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** The generator of one epoch's order. */
export function epochRng(seed: number, epoch: number): Rng {
  return Rng.fromSeed(hash32(`order/${seed}/${epoch}`));
}

/**
 * Whether line `line` of the file `key` belongs to the eval split. The choice depends on the
 * seed, the key and the line number only, so it is the same in every epoch and every run, and
 * the train and eval splits are disjoint by construction.
 */
export function isEvalLine(seed: number, key: string, line: number, evalFraction: number): boolean {
  return evalFraction > 0 && hash32(`eval/${seed}/${key}/${line}`) / 4294967296 < evalFraction;
}

/** The items in a random order (Fisher-Yates). */
export function permute<T>(items: readonly T[], rng: Rng): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

/** The items of `source` through a shuffle buffer of `size` (see the file comment). */
export async function* shuffleBuffer<T>(source: AsyncIterable<T>, size: number, rng: Rng): AsyncGenerator<T> {
  const buffer: T[] = [];
  for await (const item of source) {
    if (buffer.length < size) {
      buffer.push(item);
      continue;
    }
    const index = rng.nextInt(size);
    const out = buffer[index] as T;
    buffer[index] = item;
    yield out;
  }
  yield* permute(buffer, rng);
}
