import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, ModelInputs } from "../model/model.ts";

/** max |actual - expected| / max |expected|: the error relative to the size of the values. */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) throw new Error(`relativeError: ${actual.length} values against ${expected.length}`);
  let maxDifference = 0;
  let maxExpected = 0;
  for (let i = 0; i < expected.length; i++) {
    maxDifference = Math.max(maxDifference, Math.abs(actual[i]! - expected[i]!));
    maxExpected = Math.max(maxExpected, Math.abs(expected[i]!));
  }
  return maxDifference / maxExpected;
}

/** The model's logits for plain id and mask arrays, flattened, with every temporary tensor freed. */
export function logitsOf(
  model: CausalLM,
  ids: number[][],
  mask?: number[][],
  extra: Omit<ModelInputs, "inputIds" | "attentionMask"> = {},
): Float32Array {
  return tf.tidy(() => {
    const shape: [number, number] = [ids.length, ids[0]!.length];
    const logits = model.forward({
      ...extra,
      inputIds: tf.tensor2d(ids.flat(), shape, "int32"),
      attentionMask: mask ? tf.tensor2d(mask.flat(), shape, "int32") : undefined,
    });
    return logits.dataSync() as Float32Array;
  });
}

/** Deterministic token ids in [0, vocab). */
export function sampleIds(batch: number, seq: number, vocab: number, salt = 0): number[][] {
  return Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, t) => (7 * b + 13 * t + 5 * salt + 3) % vocab));
}
