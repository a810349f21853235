import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { attentionBias, batchedAttention, perHeadAttention } from "./attention.ts";
import { dropoutMask } from "./model.ts";

beforeAll(async () => {
  await selectBackend("cpu");
});

const rng = Rng.fromSeed(4);
const random = (shape: [number, number, number, number]) =>
  tf.tensor4d(rng.fillUniform(new Float32Array(shape.reduce((a, b) => a * b, 1)), -1, 1), shape);

describe("per-head attention", () => {
  // 2 sequences, 4 query heads sharing 2 key/value heads, 3 prefix positions, padding in the second row.
  const [batch, heads, kvHeads, seq, prefix, headDim] = [2, 4, 2, 5, 3, 6];
  const padding = () => tf.tensor2d([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], [batch, seq], "int32");

  it("computes what the batched form computes, with its gradients, under GQA, a prefix and padding", () => {
    tf.tidy(() => {
      const q = random([batch, heads, seq, headDim]);
      const k = random([batch, kvHeads, prefix + seq, headDim]);
      const v = random([batch, kvHeads, prefix + seq, headDim]);
      const weights = random([batch, heads, seq, headDim]);
      // A dropout mask on the probabilities: the backward pass must route gradients through it.
      const dropped = dropoutMask([batch, heads, seq, prefix + seq], 0.3, Rng.fromSeed(2), "attention");
      const cases = [
        { bias: attentionBias(batch, seq, prefix, padding()), mask: undefined },
        { bias: attentionBias(batch, seq, prefix, undefined), mask: undefined },
        { bias: attentionBias(batch, seq, prefix, padding(), 4), mask: dropped },
      ];
      for (const { bias, mask } of cases) {
        const lossOf = (attention: typeof batchedAttention) => (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
          tf.sum(tf.mul(attention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, bias, 0.4, mask), weights));
        expect(relativeError(perHeadAttention(q, k, v, bias, 0.4, mask).dataSync(), batchedAttention(q, k, v, bias, 0.4, mask).dataSync())).toBeLessThan(1e-6);
        const expected = tf.grads(lossOf(batchedAttention))([q, k, v]);
        const actual = tf.grads(lossOf(perHeadAttention))([q, k, v]);
        for (let i = 0; i < 3; i++) expect(relativeError(actual[i]!.dataSync(), expected[i]!.dataSync())).toBeLessThan(1e-5);
      }
    });
  });

  it("hides keys a sliding window leaves behind: a query sees itself and the window - 1 positions before it, prefix included", () => {
    const bias = tf.tidy(() => Array.from(attentionBias(1, 4, 2, undefined, 3).dataSync()));
    const visible = (row: number) => bias.slice(row * 6, row * 6 + 6).map((value) => (value === 0 ? 1 : 0));
    // Keys: 2 prefix positions, then the 4 input positions; query i is at position 2 + i.
    expect([0, 1, 2, 3].map(visible)).toEqual([
      [1, 1, 1, 0, 0, 0],
      [0, 1, 1, 1, 0, 0],
      [0, 0, 1, 1, 1, 0],
      [0, 0, 0, 1, 1, 1],
    ]);
  });

  it("keeps no tensors after a forward pass without gradients, or after a backward pass", () => {
    const q = random([batch, heads, seq, headDim]);
    const k = random([batch, kvHeads, seq, headDim]);
    const v = random([batch, kvHeads, seq, headDim]);
    const bias = tf.tidy(() => attentionBias(batch, seq, 0, padding()));
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      perHeadAttention(q, k, v, bias, 1);
    });
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(tf.grads((a: tf.Tensor) => tf.sum(perHeadAttention(a as tf.Tensor4D, k, v, bias, 1)))([q]));
    expect(tf.memory().numTensors).toBe(before);
  });
});
