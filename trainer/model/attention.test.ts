import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { attentionBias, batchedAttention, perHeadAttention } from "./attention.ts";

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
      for (const bias of [attentionBias(batch, seq, prefix, padding()), attentionBias(batch, seq, prefix, undefined)]) {
        const lossOf = (attention: typeof batchedAttention) => (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
          tf.sum(tf.mul(attention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D, bias, 0.4), weights));
        expect(relativeError(perHeadAttention(q, k, v, bias, 0.4).dataSync(), batchedAttention(q, k, v, bias, 0.4).dataSync())).toBeLessThan(1e-6);
        const expected = tf.grads(lossOf(batchedAttention))([q, k, v]);
        const actual = tf.grads(lossOf(perHeadAttention))([q, k, v]);
        for (let i = 0; i < 3; i++) expect(relativeError(actual[i]!.dataSync(), expected[i]!.dataSync())).toBeLessThan(1e-5);
      }
    });
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
