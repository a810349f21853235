import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { Rng } from "../random.ts";
import { crossEntropySum, nextTokenTargets } from "./loss.ts";

beforeAll(async () => {
  await selectBackend("cpu");
});

describe("nextTokenTargets", () => {
  it("shifts labels left by one, so position t is scored on label t + 1, and skips -100", () => {
    const labels = Int32Array.from([-100, -100, 7, 8, /* row 2 */ 3, 4, -100, -100]);
    const targets = nextTokenTargets(labels, 2, 4);
    expect([...targets.ids]).toEqual([0, 7, 8, 0, 4, 0, 0, 0]);
    expect([...targets.mask]).toEqual([0, 1, 1, 0, 1, 0, 0, 0]);
    expect(targets.count).toBe(3);
  });
});

describe("crossEntropySum", () => {
  const rows = 2;
  const seq = 3;
  const vocab = 5;
  const labels = Int32Array.from([1, 2, 3, -100, 4, 0]);
  const values = Rng.fromSeed(3).fillUniform(new Float32Array(rows * seq * vocab), -2, 2);

  it("equals -Σ log softmax(logits)[target] over positions with a target, times the scale", () => {
    const targets = nextTokenTargets(labels, rows, seq);
    const loss = tf.tidy(() => crossEntropySum(tf.tensor3d(values, [rows, seq, vocab]), targets, 0.5).dataSync()[0]!);
    let expected = 0;
    for (let p = 0; p < rows * seq; p++) {
      if (targets.mask[p] === 0) continue;
      const row = Array.from(values.subarray(p * vocab, (p + 1) * vocab));
      const max = Math.max(...row);
      const logSumExp = max + Math.log(row.reduce((sum, z) => sum + Math.exp(z - max), 0));
      expected += logSumExp - row[targets.ids[p]!]!;
    }
    expect(loss).toBeCloseTo(0.5 * expected, 5);
  });

  it("has the gradient of its value (finite differences)", () => {
    const targets = nextTokenTargets(labels, rows, seq);
    const logits = tf.variable(tf.tensor3d(values, [rows, seq, vocab]));
    const f = () => crossEntropySum(logits as unknown as tf.Tensor3D, targets, 0.5);
    const { value, grads } = tf.variableGrads(f, [logits]);
    const gradient = grads[logits.name]!.dataSync();
    const epsilon = 1e-2;
    for (let i = 0; i < values.length; i++) {
      const at = (delta: number) => {
        const shifted = Float32Array.from(values);
        shifted[i]! += delta;
        return tf.tidy(() => {
          logits.assign(tf.tensor3d(shifted, [rows, seq, vocab]));
          return f().dataSync()[0]!;
        });
      };
      expect(gradient[i]).toBeCloseTo((at(epsilon) - at(-epsilon)) / (2 * epsilon), 3);
    }
    tf.dispose([value, grads[logits.name]!, logits]);
  });
});
