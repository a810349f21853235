import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { Linear } from "../model/model.ts";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { crossEntropySum, nextTokenTargets, type NextTokenTargets } from "./loss.ts";

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

/** The loss and its gradients in float64, straight from the definition over full logits z = h · W. */
function reference(hidden: Float32Array, kernel: Float32Array, targets: NextTokenTargets, width: number, vocab: number, scale: number) {
  const positions = targets.ids.length;
  let loss = 0;
  const dHidden = new Float64Array(positions * width);
  const dKernel = new Float64Array(width * vocab);
  for (let p = 0; p < positions; p++) {
    if (targets.mask[p] === 0) continue;
    const z = Array.from({ length: vocab }, (_, v) => {
      let sum = 0;
      for (let d = 0; d < width; d++) sum += hidden[p * width + d]! * kernel[d * vocab + v]!;
      return sum;
    });
    const max = Math.max(...z);
    const logSumExp = max + Math.log(z.reduce((sum, value) => sum + Math.exp(value - max), 0));
    loss += scale * (logSumExp - z[targets.ids[p]!]!);
    for (let v = 0; v < vocab; v++) {
      const dz = scale * (Math.exp(z[v]! - logSumExp) - (v === targets.ids[p] ? 1 : 0));
      for (let d = 0; d < width; d++) {
        dHidden[p * width + d]! += dz * kernel[d * vocab + v]!;
        dKernel[d * vocab + v]! += dz * hidden[p * width + d]!;
      }
    }
  }
  return { loss, dHidden, dKernel };
}

describe("crossEntropySum over chunks of positions", () => {
  const [rows, seq, width, vocab, scale] = [2, 5, 3, 7, 0.25];
  // Targets at positions 0-3 and 7-8 of the 10: a chunk of 2 at positions 4-5 has none.
  const labels = Int32Array.from([1, 2, 3, 4, 5, /* row 2 */ -100, -100, -100, 6, 0]);
  const targets = nextTokenTargets(labels, rows, seq);
  const rng = Rng.fromSeed(3);
  const hiddenValues = rng.fillUniform(new Float32Array(rows * seq * width), -2, 2);
  const kernelValues = rng.fillUniform(new Float32Array(width * vocab), -1, 1);
  const expected = reference(hiddenValues, kernelValues, targets, width, vocab, scale);

  for (const chunkPositions of [1, 2, 3, undefined]) {
    it(`gives the float64 loss and gradients for the hidden states and a trainable head kernel (${chunkPositions ?? "default"} positions a chunk)`, () => {
      const hidden = tf.variable(tf.tensor3d(hiddenValues, [rows, seq, width]));
      const head = new Linear("lm_head", tf.variable(tf.tensor2d(kernelValues, [width, vocab])), undefined, "linear");
      const { value, grads } = tf.variableGrads(
        () => crossEntropySum(hidden as unknown as tf.Tensor3D, head, targets, { scale, ...(chunkPositions ? { chunkPositions } : {}) }),
        [hidden, head.kernel],
      );
      expect(Math.abs(value.dataSync()[0]! - expected.loss) / expected.loss).toBeLessThan(1e-6);
      const dHidden = grads[hidden.name]!.dataSync();
      expect(relativeError(dHidden, expected.dHidden)).toBeLessThan(1e-6);
      expect(relativeError(grads[head.kernel.name]!.dataSync(), expected.dKernel)).toBeLessThan(1e-6);
      // Positions without a target (4, 5, 6, 9) get exactly no gradient.
      for (const p of [4, 5, 6, 9]) expect([...dHidden.subarray(p * width, (p + 1) * width)]).toEqual([0, 0, 0]);
      tf.dispose([value, ...Object.values(grads), hidden, head.kernel]);
    });
  }

  it("is 0 with no gradient for a batch without a single target", () => {
    const none = nextTokenTargets(new Int32Array(rows * seq).fill(-100), rows, seq);
    const hidden = tf.variable(tf.tensor3d(hiddenValues, [rows, seq, width]));
    const head = new Linear("lm_head", tf.variable(tf.tensor2d(kernelValues, [width, vocab])), undefined, "linear");
    const { value, grads } = tf.variableGrads(() => crossEntropySum(hidden as unknown as tf.Tensor3D, head, none), [hidden, head.kernel]);
    expect(value.dataSync()[0]).toBe(0);
    expect(grads[hidden.name]!.dataSync().every((g) => g === 0)).toBe(true);
    expect(grads[head.kernel.name]!.dataSync().every((g) => g === 0)).toBe(true);
    tf.dispose([value, ...Object.values(grads), hidden, head.kernel]);
  });

  it("picks the right targets at positions whose flat index p x vocab + id would pass 2^31", () => {
    // 32,769 positions of a 65,536-token vocabulary, hidden width 1: logits z[p][v] = h[p] · k[v].
    // Targets only at the first position and the last three; chunks without one cost nothing.
    const [positions, bigVocab] = [2 ** 15 + 1, 2 ** 16];
    const kernel = Float32Array.from({ length: bigVocab }, (_, v) => Math.fround(((v * 7919) % 1000) / 500 - 1));
    const scored = [0, positions - 3, positions - 2, positions - 1];
    const ids = new Int32Array(positions);
    const mask = new Float32Array(positions);
    scored.forEach((p, i) => {
      ids[p] = bigVocab - 1 - 17 * i;
      mask[p] = 1;
    });
    expect((positions - 1) * bigVocab + ids[positions - 1]!).toBeGreaterThan(2 ** 31);
    // Every h[p] = 1: one logSumExp serves every position.
    const max = Math.max(...kernel);
    const logSumExp = max + Math.log(kernel.reduce((sum, k) => sum + Math.exp(k - max), 0));
    const expectedLoss = scored.reduce((sum, p) => sum + logSumExp - kernel[ids[p]!]!, 0);

    const head = new Linear("lm_head", tf.variable(tf.tensor2d(kernel, [1, bigVocab]), false), undefined, "linear");
    const loss = tf.tidy(() => crossEntropySum(tf.ones([1, positions, 1]), head, { ids, mask, count: scored.length }).dataSync()[0]!);
    // float32 sums of 65,536 terms: 1e-5; a wrong pick is off by a tenth or more.
    expect(Math.abs(loss - expectedLoss) / expectedLoss).toBeLessThan(1e-5);
    head.kernel.dispose();
  });
});
