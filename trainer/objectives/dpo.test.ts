import { rm } from "node:fs/promises";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import type { BatchData, TokenBatch } from "../data/batching.ts";
import { IGNORE_INDEX } from "../data/encode.ts";
import type { LoraOptions } from "../methods/lora/config.ts";
import { fullMethod } from "../methods/full/model.ts";
import { loraMethod, type LoraAdapter } from "../methods/lora/model.ts";
import type { Adapter } from "../methods/method.ts";
import { loadModel } from "../model/loader.ts";
import type { CausalLM } from "../model/model.ts";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { randomizeLoraB, usingAdapter } from "../testing/method-tests.ts";
import { TINY_LLAMA, writeTinyModel, type TinyModel } from "../testing/tiny-models.ts";
import { nextTokenTargets } from "../train/loss.ts";
import { DpoObjective, dpoObjective, joinRows, rowKey } from "./dpo.ts";
import { sequenceLogProbabilities } from "./log-probabilities.ts";

let folder: TinyModel;
let llama: CausalLM;

beforeAll(async () => {
  await selectBackend("cpu");
  folder = await writeTinyModel(TINY_LLAMA, { seed: 11 });
  llama = await loadModel(folder.store);
});

afterAll(async () => {
  llama.dispose();
  await rm(folder.dir, { recursive: true, force: true });
});

/** TRL's sigmoid DPO loss for one pair, in float64: −(1−ε) log σ(βm) − ε log σ(−βm). */
function trlLoss(m: number, beta: number, labelSmoothing: number): number {
  const logSigmoid = (x: number) => -Math.log1p(Math.exp(-x));
  return -(1 - labelSmoothing) * logSigmoid(beta * m) - labelSmoothing * logSigmoid(-beta * m);
}

/**
 * Two preference pairs sharing a 3-token prompt each, completions of different lengths: the
 * rejected row of the second pair is the shortest, so its padding (labels IGNORE_INDEX) shows.
 */
function preferenceBatch(vocab: number, seed: number): BatchData & { kind: "preference" } {
  const rng = Rng.fromSeed(seed);
  const seqLength = 10;
  const rows = (lengths: number[], prompts: number[][]): TokenBatch => {
    const inputIds = new Int32Array(2 * seqLength);
    const attentionMask = new Int32Array(2 * seqLength);
    const labels = new Int32Array(2 * seqLength).fill(IGNORE_INDEX);
    lengths.forEach((length, row) => {
      for (let t = 0; t < length; t++) {
        const id = t < 3 ? prompts[row]![t]! : 1 + rng.nextInt(vocab - 1);
        inputIds[row * seqLength + t] = id;
        attentionMask[row * seqLength + t] = 1;
        if (t >= 3) labels[row * seqLength + t] = id;
      }
    });
    return { rows: 2, seqLength, inputIds, attentionMask, labels };
  };
  const prompts = [0, 1].map(() => [0, 1, 2].map(() => 1 + rng.nextInt(vocab - 1)));
  return { kind: "preference", chosen: rows([10, 8], prompts), rejected: rows([9, 5], prompts) };
}

function withLora<T>(model: CausalLM, options: LoraOptions, body: (adapter: LoraAdapter) => T): T {
  const adapter = loraMethod.inject(model, options, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" }) as LoraAdapter;
  return usingAdapter(adapter, () => {
    // B starts at zero (policy = reference, every margin 0); random values make the pairs differ.
    randomizeLoraB(adapter);
    return body(adapter);
  });
}

/** Per row, the completion's summed log-probability from the full logits, in float64. */
function rowLogProbabilities(logits: Float32Array, batch: TokenBatch, vocab: number): number[] {
  const targets = nextTokenTargets(batch.labels, batch.rows, batch.seqLength);
  const sums = new Array<number>(batch.rows).fill(0);
  for (let position = 0; position < batch.rows * batch.seqLength; position++) {
    if (!targets.mask[position]) continue;
    const row = logits.subarray(position * vocab, (position + 1) * vocab);
    let max = -Infinity;
    for (const value of row) max = Math.max(max, value);
    let total = 0;
    for (const value of row) total += Math.exp(value - max);
    sums[Math.floor(position / batch.seqLength)]! += row[targets.ids[position]!]! - max - Math.log(total);
  }
  return sums;
}

function logitsOf(adapter: Pick<Adapter, "forward">, batch: TokenBatch, disableAdapters: boolean): Float32Array {
  const shape: [number, number] = [batch.rows, batch.seqLength];
  return tf.tidy(() =>
    adapter.forward({ inputIds: tf.tensor2d(batch.inputIds, shape, "int32"), attentionMask: tf.tensor2d(batch.attentionMask, shape, "int32"), disableAdapters }).dataSync() as Float32Array,
  );
}

/** The mean DPO loss over the pairs, from full logits, differentiated op by op by tfjs: the unchunked reference gradient. */
function unchunkedGradients(adapter: Adapter, batch: BatchData & { kind: "preference" }, beta: number, labelSmoothing: number, referenceLogps?: number[]): ArrayLike<number>[] {
  const joined = joinRows(batch.chosen, batch.rejected);
  const shape: [number, number] = [joined.rows, joined.seqLength];
  const targets = nextTokenTargets(joined.labels, joined.rows, joined.seqLength);
  const vocab = adapter.model.config.vocabSize;
  const reference = referenceLogps ?? rowLogProbabilities(logitsOf(adapter, joined, true), joined, vocab);
  const variables = [...adapter.trainableVariables().values()];
  const { grads } = tf.variableGrads(() => {
    const logits = adapter.forward({ inputIds: tf.tensor2d(joined.inputIds, shape, "int32"), attentionMask: tf.tensor2d(joined.attentionMask, shape, "int32"), training: true });
    const logProbabilities = tf.logSoftmax(logits);
    const picked = tf.mul(tf.cast(tf.oneHot(tf.tensor(targets.ids, shape, "int32"), vocab), "float32"), tf.tensor(targets.mask, [...shape, 1]));
    const rows = tf.sub(tf.sum(tf.mul(logProbabilities, picked), [1, 2]), tf.tensor1d(reference));
    const [chosen, rejected] = tf.split(rows, 2);
    const m = tf.mul(tf.sub(chosen!, rejected!), beta);
    const losses = tf.add(tf.mul(tf.softplus(tf.neg(m)), 1 - labelSmoothing), tf.mul(tf.softplus(m), labelSmoothing));
    return tf.mean(losses) as tf.Scalar;
  }, variables);
  const result = variables.map((variable) => grads[variable.name]!.dataSync());
  tf.dispose(Object.values(grads));
  return result;
}

describe("the DPO loss", () => {
  it("is TRL's sigmoid loss with label smoothing, pair by pair", () => {
    const objective = new DpoObjective({ beta: 0.5, labelSmoothing: 0.1 });
    // [chosen; rejected] summed log-probabilities of two pairs.
    const policy = [-3, -7, -4, -6.5];
    const reference = [-3.5, -6, -3.75, -6];
    const losses = tf.tidy(() => objective.pairLosses(tf.tensor1d(policy), tf.tensor1d(reference)).arraySync());
    // Pair 0: m = (-3 + 3.5) - (-4 + 3.75) = 0.75; pair 1: m = (-7 + 6) - (-6.5 + 6) = -0.5.
    expect(losses[0]).toBeCloseTo(trlLoss(0.75, 0.5, 0.1), 6);
    expect(losses[1]).toBeCloseTo(trlLoss(-0.5, 0.5, 0.1), 6);
    // By hand, pair 0: −0.9·log σ(0.375) − 0.1·log σ(−0.375) = 0.9·0.523123 + 0.1·0.898123 = 0.560623.
    expect(losses[0]).toBeCloseTo(0.560623, 5);
  });

  for (const [name, lora, beta, labelSmoothing] of [
    ["LoRA on q_proj and v_proj, beta 0.1", { targetModules: ["q_proj", "v_proj"], r: 4, alpha: 8 }, 0.1, 0],
    ["LoRA on lm_head too, beta 0.5, labelSmoothing 0.2", { targetModules: ["q_proj", "v_proj", "lm_head"], r: 4, alpha: 8 }, 0.5, 0.2],
  ] as const) {
    it(`matches a hand-computed loss and gradient on a two-pair batch (${name})`, () => {
      const batch = preferenceBatch(TINY_LLAMA.vocab_size, 4);
      withLora(llama, lora, (adapter) => {
        const objective = new DpoObjective({ beta, labelSmoothing });
        const variables = [...adapter.trainableVariables().values()];
        const { loss, gradients, logProbabilities } = objective.lossAndGradients(adapter, [batch], variables);

        // The loss by hand: log-probabilities from the full logits in float64, then TRL's formula.
        const joined = joinRows(batch.chosen, batch.rejected);
        const vocab = TINY_LLAMA.vocab_size;
        const policy = rowLogProbabilities(logitsOf(adapter, joined, false), joined, vocab);
        const reference = rowLogProbabilities(logitsOf(adapter, joined, true), joined, vocab);
        expect(policy[0]).not.toBeCloseTo(reference[0]!, 2);
        const margins = [0, 1].map((i) => policy[i]! - reference[i]! - (policy[i + 2]! - reference[i + 2]!));
        const expected = (trlLoss(margins[0]!, beta, labelSmoothing) + trlLoss(margins[1]!, beta, labelSmoothing)) / 2;
        expect(Math.abs(loss.dataSync()[0]! - expected) / expected).toBeLessThan(1e-5);
        expect(Array.from(logProbabilities[0]!.policyChosen)).toEqual([expect.closeTo(policy[0]!, 4), expect.closeTo(policy[1]!, 4)]);
        expect(Array.from(logProbabilities[0]!.referenceRejected)).toEqual([expect.closeTo(reference[2]!, 4), expect.closeTo(reference[3]!, 4)]);

        const expectedGradients = unchunkedGradients(adapter, batch, beta, labelSmoothing);
        gradients.forEach((gradient, i) => {
          const values = gradient.dataSync();
          expect(Math.max(...Array.from(expectedGradients[i]!, Math.abs))).toBeGreaterThan(0);
          expect(relativeError(values, expectedGradients[i]!)).toBeLessThan(1e-4);
        });
        tf.dispose([loss, ...gradients]);
      });
    });
  }

  it("gives the same loss and gradients for a step split into two micro-batches", () => {
    const batch = preferenceBatch(TINY_LLAMA.vocab_size, 6);
    const half = (rows: TokenBatch, row: number): TokenBatch => {
      const range = (a: Int32Array) => a.slice(row * rows.seqLength, (row + 1) * rows.seqLength);
      return { rows: 1, seqLength: rows.seqLength, inputIds: range(rows.inputIds), attentionMask: range(rows.attentionMask), labels: range(rows.labels) };
    };
    const split: BatchData[] = [0, 1].map((row) => ({ kind: "preference", chosen: half(batch.chosen, row), rejected: half(batch.rejected, row) }));
    withLora(llama, { targetModules: ["q_proj", "v_proj"], r: 4, alpha: 8 }, (adapter) => {
      const objective = new DpoObjective({ beta: 0.1, labelSmoothing: 0 });
      const variables = [...adapter.trainableVariables().values()];
      const whole = objective.lossAndGradients(adapter, [batch], variables);
      const parts = objective.lossAndGradients(adapter, split, variables);
      expect(parts.loss.dataSync()[0]).toBeCloseTo(whole.loss.dataSync()[0]!, 6);
      whole.gradients.forEach((gradient, i) => expect(relativeError(parts.gradients[i]!.dataSync(), gradient.dataSync())).toBeLessThan(1e-5));
      tf.dispose([whole.loss, parts.loss, ...whole.gradients, ...parts.gradients]);
    });
  });

  it("refuses bad options", () => {
    expect(() => dpoObjective({ beta: 0, labelSmoothing: 0 }, { type: "lora" })).toThrow(/spec.objective.dpo.beta/);
    expect(() => dpoObjective({ beta: 0.1, labelSmoothing: 0.6 }, { type: "lora" })).toThrow(/spec.objective.dpo.labelSmoothing/);
  });

  it("with full fine-tuning, trains against log-probabilities precomputed from the initial model: TRL's loss and the gradient by hand", async () => {
    const batch = preferenceBatch(TINY_LLAMA.vocab_size, 4);
    // A second copy of the tiny model trains; `llama` stays the initial model, the reference by hand.
    const model = await loadModel(folder.store);
    const adapter = fullMethod.inject(model, undefined, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" });
    try {
      const [beta, labelSmoothing] = [0.5, 0.2];
      const objective = dpoObjective({ beta, labelSmoothing }, adapter);
      expect(objective.reference).toBe("precomputed");
      const variables = [...adapter.trainableVariables().values()];
      expect(() => objective.lossAndGradients(adapter, [batch], variables)).toThrow(/not precomputed/);
      // The precomputing pass sees the rows in other batches (one pair each, shorter padding) than the step will.
      const single = (row: number): BatchData => {
        const take = (rows: TokenBatch): TokenBatch => {
          let length = rows.seqLength;
          while (rows.attentionMask[row * rows.seqLength + length - 1] === 0 && length > 1) length--;
          const range = (a: Int32Array) => a.slice(row * rows.seqLength, row * rows.seqLength + length);
          return { rows: 1, seqLength: length, inputIds: range(rows.inputIds), attentionMask: range(rows.attentionMask), labels: range(rows.labels) };
        };
        const [chosen, rejected] = [take(batch.chosen), take(batch.rejected)];
        const seqLength = Math.max(chosen.seqLength, rejected.seqLength);
        const pad = (rows: TokenBatch): TokenBatch => {
          const grow = (a: Int32Array, fill: number) => Int32Array.from({ length: seqLength }, (_, i) => (i < rows.seqLength ? a[i]! : fill));
          return { rows: 1, seqLength, inputIds: grow(rows.inputIds, 0), attentionMask: grow(rows.attentionMask, 0), labels: grow(rows.labels, IGNORE_INDEX) };
        };
        return { kind: "preference", chosen: pad(chosen), rejected: pad(rejected) };
      };
      async function* batches() {
        yield single(0);
        yield single(1);
      }
      await objective.precomputeReference(adapter, [batches()]);
      // The policy moves away from the initial model, as training would move it.
      variables.forEach((variable, i) => tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.05, "float32", 100 + i)))));

      const { loss, gradients, logProbabilities } = objective.lossAndGradients(adapter, [batch], variables);
      const joined = joinRows(batch.chosen, batch.rejected);
      const vocab = TINY_LLAMA.vocab_size;
      const policy = rowLogProbabilities(logitsOf(adapter, joined, false), joined, vocab);
      const reference = rowLogProbabilities(logitsOf(llama, joined, true), joined, vocab);
      expect(policy[0]).not.toBeCloseTo(reference[0]!, 2);
      const margins = [0, 1].map((i) => policy[i]! - reference[i]! - (policy[i + 2]! - reference[i + 2]!));
      const expected = (trlLoss(margins[0]!, beta, labelSmoothing) + trlLoss(margins[1]!, beta, labelSmoothing)) / 2;
      expect(Math.abs(loss.dataSync()[0]! - expected) / expected).toBeLessThan(1e-5);
      expect(Array.from(logProbabilities[0]!.referenceChosen)).toEqual([expect.closeTo(reference[0]!, 4), expect.closeTo(reference[1]!, 4)]);
      expect(Array.from(logProbabilities[0]!.referenceRejected)).toEqual([expect.closeTo(reference[2]!, 4), expect.closeTo(reference[3]!, 4)]);

      const expectedGradients = unchunkedGradients(adapter, batch, beta, labelSmoothing, reference);
      gradients.forEach((gradient, i) => {
        expect(Math.max(...Array.from(expectedGradients[i]!, Math.abs))).toBeGreaterThan(0);
        expect(relativeError(gradient.dataSync(), expectedGradients[i]!)).toBeLessThan(1e-4);
      });
      tf.dispose([loss, ...gradients]);
    } finally {
      adapter.remove();
      model.dispose();
    }
  });

  it("keys a precomputed row by its tokens and labels, not by its padding", () => {
    const batch = preferenceBatch(TINY_LLAMA.vocab_size, 4).rejected;
    const wider: TokenBatch = {
      rows: 1,
      seqLength: 14,
      inputIds: Int32Array.from({ length: 14 }, (_, i) => (i < 10 ? batch.inputIds[10 + i]! : 0)),
      attentionMask: Int32Array.from({ length: 14 }, (_, i) => (i < 10 ? batch.attentionMask[10 + i]! : 0)),
      labels: Int32Array.from({ length: 14 }, (_, i) => (i < 10 ? batch.labels[10 + i]! : IGNORE_INDEX)),
    };
    expect(rowKey(wider, 0)).toBe(rowKey(batch, 1));
    expect(rowKey(batch, 0)).not.toBe(rowKey(batch, 1));
    // The same tokens with another prompt/completion split are another row.
    const relabelled = { ...wider, labels: wider.labels.map((label, i) => (i === 3 ? IGNORE_INDEX : label)) };
    expect(rowKey(relabelled, 0)).not.toBe(rowKey(wider, 0));
  });
});

describe("sequence log-probabilities over chunks", () => {
  it("give the same values and gradients in chunks of 3 positions as in one chunk per row", () => {
    const batch = joinRows(preferenceBatch(TINY_LLAMA.vocab_size, 8).chosen, preferenceBatch(TINY_LLAMA.vocab_size, 8).rejected);
    const targets = nextTokenTargets(batch.labels, batch.rows, batch.seqLength);
    withLora(llama, { targetModules: ["v_proj", "lm_head"], r: 2, alpha: 4 }, (adapter) => {
      const variables = [...adapter.trainableVariables().values()];
      const coefficients = tf.tensor1d([0.3, -1.2, 0.7, 2]);
      const run = (chunkPositions: number) => {
        const { value, grads } = tf.variableGrads(() => {
          const shape: [number, number] = [batch.rows, batch.seqLength];
          const hidden = adapter.forward({ inputIds: tf.tensor2d(batch.inputIds, shape, "int32"), attentionMask: tf.tensor2d(batch.attentionMask, shape, "int32"), skipOutputHead: true });
          return tf.sum(tf.mul(sequenceLogProbabilities(hidden, adapter.model.outputHead, targets, { chunkPositions }), coefficients)) as tf.Scalar;
        }, variables);
        const result = { value: value.dataSync()[0]!, gradients: variables.map((variable) => grads[variable.name]!.dataSync()) };
        tf.dispose([value, ...Object.values(grads)]);
        return result;
      };
      const [small, whole] = [run(3), run(1000)];
      expect(small.value).toBeCloseTo(whole.value, 4);
      whole.gradients.forEach((gradient, i) => expect(relativeError(small.gradients[i]!, gradient)).toBeLessThan(1e-5));
      coefficients.dispose();
    });
  });
});
