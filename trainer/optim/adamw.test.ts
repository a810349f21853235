import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { beforeAll, describe, expect, it } from "vitest";
import { AdamW, clipByGlobalNorm } from "./adamw.ts";

beforeAll(async () => {
  await tf.setBackend("cpu");
});

/** torch.optim.AdamW's update, step by step in float64, for one scalar parameter. */
function referenceAdamW(p: number, gradients: number[], lr: number, wd: number, b1 = 0.9, b2 = 0.999, eps = 1e-8): number {
  let m = 0;
  let v = 0;
  gradients.forEach((g, index) => {
    const t = index + 1;
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    p -= (lr * (m / (1 - b1 ** t))) / (Math.sqrt(v / (1 - b2 ** t)) + eps);
  });
  return p;
}

describe("AdamW", () => {
  it("matches torch.optim.AdamW's update rule", () => {
    const variable = tf.variable(tf.tensor1d([0.5, -1.5]));
    const optimizer = new AdamW([{ name: "w", variable, decay: true }], { weightDecay: 0.01 });
    const gradients = [
      [0.1, -0.2],
      [0.3, 0.05],
      [-0.2, 0.4],
    ];
    for (const step of gradients) optimizer.apply([tf.tensor1d(step)], 0.01);
    const got = variable.dataSync();
    expect(got[0]).toBeCloseTo(referenceAdamW(0.5, gradients.map((g) => g[0]!), 0.01, 0.01), 6);
    expect(got[1]).toBeCloseTo(referenceAdamW(-1.5, gradients.map((g) => g[1]!), 0.01, 0.01), 6);
  });

  it("skips weight decay for parameters marked decay: false", () => {
    const variable = tf.variable(tf.tensor1d([2]));
    const optimizer = new AdamW([{ name: "bias", variable, decay: false }], { weightDecay: 0.5 });
    optimizer.apply([tf.tensor1d([0])], 0.1);
    expect(variable.dataSync()[0]).toBe(2);
  });

  it("restores saved state so that the next update is identical", () => {
    const run = (restore: boolean) => {
      const variable = tf.variable(tf.tensor1d([1, 2, 3]));
      let optimizer = new AdamW([{ name: "w", variable, decay: true }], { weightDecay: 0.1 });
      optimizer.apply([tf.tensor1d([0.1, 0.2, 0.3])], 0.01);
      if (restore) {
        const saved = optimizer.saveState();
        const step = optimizer.step;
        optimizer.dispose();
        optimizer = new AdamW([{ name: "w", variable, decay: true }], { weightDecay: 0.1 });
        optimizer.loadState(step, saved);
      }
      optimizer.apply([tf.tensor1d([-0.3, 0.1, 0.2])], 0.01);
      return [...variable.dataSync()];
    };
    expect(run(true)).toEqual(run(false));
  });
});

describe("clipByGlobalNorm", () => {
  it("scales gradients to the maximum norm and reports the norm before", () => {
    const { gradients, norm } = clipByGlobalNorm([tf.tensor1d([3]), tf.tensor1d([4])], 1);
    expect(norm.dataSync()[0]).toBeCloseTo(5, 6);
    expect(gradients[0]!.dataSync()[0]).toBeCloseTo(0.6, 5);
    expect(gradients[1]!.dataSync()[0]).toBeCloseTo(0.8, 5);
  });

  it("leaves gradients under the maximum bit for bit alone", () => {
    const { gradients } = clipByGlobalNorm([tf.tensor1d([0.3, 0.4])], 1);
    expect(gradients[0]!.dataSync()).toEqual(Float32Array.from([0.3, 0.4]));
  });

  it("leaves gradients alone and still reports the norm with clipping off (maxNorm 0)", () => {
    const { gradients, norm } = clipByGlobalNorm([tf.tensor1d([30, 40])], 0);
    expect(norm.dataSync()[0]).toBeCloseTo(50, 4);
    expect(gradients[0]!.dataSync()).toEqual(Float32Array.from([30, 40]));
  });
});
