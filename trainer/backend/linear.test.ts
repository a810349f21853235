import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { selectBackend } from "./backend.ts";
import { linear } from "./linear.ts";

beforeAll(async () => {
  await selectBackend("cpu");
});

function random(shape: number[], seed: number): tf.Tensor {
  const rng = Rng.fromSeed(seed);
  return tf.tensor(rng.fillUniform(new Float32Array(shape.reduce((a, b) => a * b, 1)), -1, 1), shape);
}

describe("linear with explicit-transpose gradients", () => {
  it("computes x · kernel + bias over leading batch dimensions", () => {
    const x = random([2, 3, 5], 1);
    const kernel = random([5, 4], 2) as tf.Tensor2D;
    const bias = random([4], 3) as tf.Tensor1D;
    const expected = tf.reshape(tf.add(tf.matMul(tf.reshape(x, [6, 5]), kernel), bias), [2, 3, 4]);
    const actual = linear(x, kernel, bias);
    expect(actual.shape).toEqual([2, 3, 4]);
    expect(relativeError(actual.dataSync(), expected.dataSync())).toBe(0);
  });

  it("gives the same gradients as tf.matMul's built-in ones, for the input and a trainable kernel", () => {
    const x = random([2, 3, 5], 4);
    const kernel = tf.variable(random([5, 4], 5) as tf.Tensor2D, true);
    const bias = random([4], 6) as tf.Tensor1D;
    const weights = random([2, 3, 4], 7);
    const lossWith = (op: (input: tf.Tensor, k: tf.Tensor2D) => tf.Tensor) => (input: tf.Tensor, k: tf.Tensor) =>
      tf.sum(tf.mul(op(input, k as tf.Tensor2D), weights));
    const custom = tf.grads(lossWith((input, k) => linear(input, k, bias)))([x, kernel]);
    const builtIn = tf.grads(lossWith((input, k) => tf.reshape(tf.add(tf.matMul(tf.reshape(input, [6, 5]), k), bias), [2, 3, 4])))([x, kernel]);
    for (let i = 0; i < 2; i++) {
      expect(custom[i]!.shape).toEqual(builtIn[i]!.shape);
      expect(relativeError(custom[i]!.dataSync(), builtIn[i]!.dataSync())).toBeLessThan(1e-6);
    }
    const viaVariables = tf.variableGrads(() => tf.sum(tf.mul(linear(x, kernel, bias), weights)) as tf.Scalar, [kernel]);
    expect(relativeError(viaVariables.grads[kernel.name]!.dataSync(), builtIn[1]!.dataSync())).toBeLessThan(1e-6);
  });

  it("treats a frozen variable kernel as a constant: input gradients only", () => {
    const x = random([4, 5], 8);
    const frozen = tf.variable(random([5, 3], 9) as tf.Tensor2D, false);
    const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.square(linear(input, frozen))))(x);
    const expected = tf.grad((input: tf.Tensor) => tf.sum(tf.square(tf.matMul(input as tf.Tensor2D, frozen))))(x);
    expect(relativeError(dx.dataSync(), expected.dataSync())).toBeLessThan(1e-6);
    expect(() => tf.grad(() => tf.sum(linear(x, frozen)))(frozen)).toThrow(/Cannot compute gradient of y=f\(x\) with respect to x/);
  });

  it("rejects an input whose width does not match the kernel", () => {
    expect(() => linear(tf.zeros([2, 3]), tf.zeros([4, 2]) as tf.Tensor2D)).toThrow("linear: input has 3 features, kernel expects 4");
  });
});
