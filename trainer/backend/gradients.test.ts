import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { selectBackend } from "./backend.ts";
import { REGISTERED_KERNELS } from "./gradients.ts";

beforeAll(async () => {
  await selectBackend("cpu");
});

const rng = Rng.fromSeed(17);

/** A tensor of uniform values in [low, high). */
function random(shape: number[], low = -1, high = 1): tf.Tensor {
  return tf.tensor(rng.fillUniform(new Float32Array(shape.reduce((a, b) => a * b, 1)), low, high), shape);
}

/**
 * Checks tf.grads of L = sum(f(inputs) * w) against central differences of L, for every
 * element of every input. Float32 differences with step 1e-2 are good to about 1e-3.
 */
function expectGradientsMatch(f: (...inputs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[]): void {
  const weights = random(f(...inputs).shape);
  const loss = (...xs: tf.Tensor[]) => tf.sum(tf.mul(f(...xs), weights));
  const analytic = tf.grads(loss)(inputs);
  const step = 1e-2;
  inputs.forEach((input, which) => {
    const values = input.dataSync() as Float32Array;
    const numeric = Array.from(values, (_, index) => {
      const at = (delta: number) => {
        const shifted = Float32Array.from(values);
        shifted[index] = shifted[index]! + delta;
        const xs = inputs.map((x, i) => (i === which ? tf.tensor(shifted, x.shape) : x));
        return loss(...xs).dataSync()[0]!;
      };
      return (at(step) - at(-step)) / (2 * step);
    });
    expect(analytic[which]!.shape).toEqual(input.shape);
    expect(relativeError(analytic[which]!.dataSync(), numeric), `input ${which}`).toBeLessThan(2e-3);
  });
}

const positive = (shape: number[]) => random(shape, 0.5, 2);

describe("registered gradients match central differences", () => {
  const cases: Array<[string, (...xs: tf.Tensor[]) => tf.Tensor, () => tf.Tensor[]]> = [
    ["Add with broadcasting", (a, b) => tf.add(a!, b!), () => [random([2, 3]), random([3])]],
    ["Sub with broadcasting", (a, b) => tf.sub(a!, b!), () => [random([2, 1]), random([2, 3])]],
    ["Multiply", (a, b) => tf.mul(a!, b!), () => [random([2, 3]), random([1, 3])]],
    ["RealDiv", (a, b) => tf.div(a!, b!), () => [random([2, 3]), positive([2, 3])]],
    ["SquaredDifference", (a, b) => tf.squaredDifference(a!, b!), () => [random([4]), random([4])]],
    ["Maximum and Minimum", (a, b) => tf.add(tf.maximum(a!, b!), tf.minimum(a!, tf.mul(b!, 0.5))), () => [tf.tensor([0.9, -0.8, 0.3]), tf.tensor([0.1, 0.2, -0.6])]],
    ["Pow", (a, b) => tf.pow(a!, b!), () => [positive([3]), random([3])]],
    ["Neg, Square, Exp, Tanh, Sigmoid, Erf, Softplus", (x) => tf.addN([tf.neg(x!), tf.square(x!), tf.exp(x!), tf.tanh(x!), tf.sigmoid(x!), tf.erf(x!), tf.softplus(x!)]), () => [random([5])]],
    ["Sqrt, Rsqrt, Log", (x) => tf.addN([tf.sqrt(x!), tf.rsqrt(x!), tf.log(x!)]), () => [positive([4])]],
    ["Relu, Abs, ClipByValue away from the kinks", (x) => tf.addN([tf.relu(x!), tf.abs(x!), tf.clipByValue(x!, -0.5, 0.5)]), () => [tf.tensor([-0.9, -0.3, 0.2, 0.7])]],
    ["Select", (t, e) => tf.where(tf.tensor([true, false, true], [3], "bool"), t!, e!), () => [random([3]), random([3])]],
    ["Cast and Identity", (x) => tf.clone(tf.cast(x!, "float32")), () => [random([3])]],
    ["Sum, Mean and Max along axes", (x) => tf.addN([tf.sum(x!, 1), tf.mean(x!, -1), tf.max(x!, 1)]), () => [tf.tensor([[0.1, 0.9, -0.4], [0.5, -0.2, 0.3]])]],
    ["Sum of everything", (x) => tf.sum(x!), () => [random([2, 2])]],
    ["Reshape and Transpose", (x) => tf.transpose(tf.reshape(x!, [2, 3, 2]), [2, 0, 1]), () => [random([3, 4])]],
    ["Concat, SplitV and Slice", (a, b) => {
      const joined = tf.concat([a!, b!], 1);
      const [left, right] = tf.split(joined, [1, 3], 1);
      return tf.add(tf.slice(tf.mul(left!, 2), [0, 0], [2, 1]), tf.slice(right!, [0, 1], [2, 1]));
    }, () => [random([2, 2]), random([2, 2])]],
    ["Tile", (x) => tf.tile(x!, [2, 1, 3]), () => [random([1, 2, 2])]],
    ["BatchMatMul, plain", (a, b) => tf.matMul(a!, b!), () => [random([2, 2, 3]), random([2, 3, 2])]],
    ["BatchMatMul, transposeA", (a, b) => tf.matMul(a!, b!, true, false), () => [random([2, 3, 2]), random([2, 3, 2])]],
    ["BatchMatMul, transposeB", (a, b) => tf.matMul(a!, b!, false, true), () => [random([2, 2, 3]), random([2, 2, 3])]],
    ["BatchMatMul, both transposed, rank 4", (a, b) => tf.matMul(a!, b!, true, true), () => [random([2, 1, 3, 2]), random([2, 1, 2, 3])]],
    ["Softmax", (x) => tf.softmax(x!), () => [random([2, 4])]],
    ["GatherV2 along axis 0 (embedding rows)", (x) => tf.gather(x!, tf.tensor2d([[2, 0], [2, 1]], [2, 2], "int32")), () => [random([3, 2])]],
  ];
  for (const [name, f, inputs] of cases) it(name, () => tf.tidy(() => expectGradientsMatch(f, inputs())));

  it("covers every kernel it registers", () => {
    expect(REGISTERED_KERNELS).toEqual(expect.arrayContaining(["Add", "Multiply", "BatchMatMul", "Softmax", "GatherV2", "SplitV", "Concat"]));
    for (const kernel of REGISTERED_KERNELS) expect(tf.getGradient(kernel), kernel).toBeDefined();
  });
});
