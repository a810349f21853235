import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { selectBackend } from "./backend.ts";
import { recomputeInBackward } from "./recompute.ts";

const [rows, width] = [64, 48];
let weights: tf.Variable[];
let frozen: tf.Variable;
let x: tf.Tensor2D;
let shift: tf.Tensor2D;

beforeAll(async () => {
  await selectBackend("cpu");
  const rng = Rng.fromSeed(4);
  const random = (shape: [number, number], trainable: boolean) => tf.variable(tf.tensor2d(rng.fillUniform(new Float32Array(shape[0] * shape[1]), -0.3, 0.3), shape), trainable);
  weights = Array.from({ length: 6 }, () => random([width, width], true));
  frozen = random([width, width], false);
  x = tf.tensor2d(rng.fillUniform(new Float32Array(rows * width), -1, 1), [rows, width]);
  shift = tf.tensor2d(rng.fillUniform(new Float32Array(width), -0.5, 0.5), [1, width]);
});

afterAll(() => tf.dispose([...weights, frozen, x, shift]));

/** A residual block with several intermediate tensors: x + tanh(x · W + shift) · F, dropout-style mask optional. */
function block(x: tf.Tensor, shift: tf.Tensor, w: tf.Variable, rng?: Rng): tf.Tensor {
  const inner = tf.tanh(tf.add(tf.matMul(x, w), shift));
  const out = tf.matMul(tf.mul(inner, tf.sigmoid(inner)), frozen);
  const masked = rng ? tf.mul(out, tf.tensor(Float32Array.from({ length: out.size }, () => (rng.nextFloat() < 0.7 ? 1 / 0.7 : 0)), out.shape)) : out;
  return tf.add(x, masked);
}

/** Loss, and gradients for x, shift and every weight, through all blocks, each recomputed or not. */
function run(recompute: boolean, rng?: Rng) {
  const f = (input: tf.Tensor, s: tf.Tensor) => {
    let h = input;
    for (const w of weights) h = recompute ? recomputeInBackward((a, b) => block(a!, b!, w, rng), [h, s], { variables: [w], generators: rng ? [rng] : [] }) : block(h, s, w, rng);
    return tf.sum(tf.square(h)) as tf.Scalar;
  };
  const { value, grads } = tf.variableGrads(() => f(x, shift), weights);
  const inputGradients = tf.grads((a: tf.Tensor, b: tf.Tensor) => f(a, b))([x, shift]);
  const result = {
    loss: value.dataSync()[0]!,
    weights: weights.map((w) => grads[w.name]!.dataSync()),
    inputs: inputGradients.map((g) => g.dataSync()),
  };
  tf.dispose([value, ...Object.values(grads), ...inputGradients]);
  return result;
}

describe("recomputeInBackward", () => {
  it("gives the gradients of ordinary backpropagation, for its inputs and for the variables it is given", () => {
    const plain = run(false);
    const recomputed = run(true);
    expect(recomputed.loss).toBe(plain.loss);
    plain.weights.forEach((gradient, i) => expect(relativeError(recomputed.weights[i]!, gradient)).toBeLessThan(1e-6));
    plain.inputs.forEach((gradient, i) => expect(relativeError(recomputed.inputs[i]!, gradient)).toBeLessThan(1e-6));
  });

  it("draws the same random numbers again when it recomputes, and leaves the generator where one pass would", () => {
    const plainRng = Rng.fromSeed(5);
    const recomputeRng = Rng.fromSeed(5);
    const plain = run(false, plainRng);
    const recomputed = run(true, recomputeRng);
    expect(recomputed.loss).toBe(plain.loss);
    plain.weights.forEach((gradient, i) => expect(relativeError(recomputed.weights[i]!, gradient)).toBeLessThan(1e-6));
    expect(recomputeRng.state()).toEqual(plainRng.state());
  });

  it("holds one block's tensors at a time: a forward and backward pass through 6 blocks peaks at under half the memory", async () => {
    const peak = async (recompute: boolean) => {
      const before = tf.memory().numBytes;
      const profile = await tf.profile(() => {
        const { value, grads } = tf.variableGrads(() => {
          let h: tf.Tensor = x;
          for (const w of weights) h = recompute ? recomputeInBackward((a, b) => block(a!, b!, w), [h, shift], { variables: [w] }) : block(h, shift, w);
          return tf.sum(tf.square(h)) as tf.Scalar;
        }, weights);
        tf.dispose([value, ...Object.values(grads)]);
      });
      expect(tf.memory().numBytes).toBe(before);
      return profile.peakBytes - before;
    };
    const [plain, recomputed] = [await peak(false), await peak(true)];
    expect(recomputed).toBeLessThan(plain / 2);
  });
});
