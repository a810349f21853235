import { rm } from "node:fs/promises";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import type { TokenBatch } from "../data/batching.ts";
import type { LoraOptions } from "../methods/lora/config.ts";
import { loraMethod, type LoraAdapter } from "../methods/lora/model.ts";
import { loadModel } from "../model/loader.ts";
import type { CausalLM } from "../model/model.ts";
import { AdamW } from "../optim/adamw.ts";
import { Rng } from "../random.ts";
import { relativeError } from "../testing/compare.ts";
import { randomizeLoraB, usingAdapter } from "../testing/method-tests.ts";
import { TINY_GPT2, TINY_LLAMA, writeTinyModel, type TinyModel } from "../testing/tiny-models.ts";
import { nextTokenTargets } from "./loss.ts";
import { lossAndGradients, trainStep } from "./step.ts";

/** Tiny Llama with 4 layers, so that keeping one block's activations instead of all shows. */
const LLAMA = { ...TINY_LLAMA, num_hidden_layers: 4 };

const folders: TinyModel[] = [];
let llama: CausalLM;
let gpt2: CausalLM;

beforeAll(async () => {
  await selectBackend("cpu");
  folders.push(await writeTinyModel(LLAMA, { seed: 11 }), await writeTinyModel(TINY_GPT2, { seed: 12 }));
  llama = await loadModel(folders[0]!.store);
  gpt2 = await loadModel(folders[1]!.store);
});

afterAll(async () => {
  llama.dispose();
  gpt2.dispose();
  for (const folder of folders) await rm(folder.dir, { recursive: true, force: true });
});

/** Random ids; the first two positions of each row are prompt (-100) and the last row ends in 3 padding positions. */
function tokenBatch(vocab: number, rows: number, seqLength: number, seed: number): TokenBatch {
  const rng = Rng.fromSeed(seed);
  const size = rows * seqLength;
  const inputIds = Int32Array.from({ length: size }, () => rng.nextInt(vocab));
  const attentionMask = Int32Array.from({ length: size }, (_, i) => (i >= size - 3 ? 0 : 1));
  const labels = inputIds.map((id, i) => (attentionMask[i] === 0 || i % seqLength < 2 ? -100 : id));
  return { rows, seqLength, inputIds, attentionMask, labels };
}

/** LoRA on `model` with random B (B starts at zero, which would leave A without gradient). */
function withLora<T>(model: CausalLM, options: LoraOptions, rng: Rng, body: (adapter: LoraAdapter) => T): T {
  const adapter = loraMethod.inject(model, options, { rng, baseModelNameOrPath: "tiny" }) as LoraAdapter;
  return usingAdapter(adapter, () => {
    randomizeLoraB(adapter);
    return body(adapter);
  });
}

function gradientsOf(adapter: LoraAdapter, batches: TokenBatch[], gradientCheckpointing = false) {
  const variables = [...adapter.trainableVariables().values()];
  const { loss, gradients } = lossAndGradients(adapter, batches, variables, { gradientCheckpointing });
  const result = { loss: loss.dataSync()[0]!, gradients: gradients.map((gradient) => gradient.dataSync()) };
  tf.dispose([loss, ...gradients]);
  return result;
}

/** The mean loss over full [rows, seq, vocab] logits, differentiated by tfjs op by op: the unchunked reference. */
function unchunkedGradientsOf(adapter: LoraAdapter, batches: TokenBatch[]) {
  const variables = [...adapter.trainableVariables().values()];
  const targets = batches.map((batch) => nextTokenTargets(batch.labels, batch.rows, batch.seqLength));
  const count = targets.reduce((sum, target) => sum + target.count, 0);
  const vocab = adapter.model.config.vocabSize;
  const { value, grads } = tf.variableGrads(() => {
    const sums = batches.map((batch, i) => {
      const shape: [number, number] = [batch.rows, batch.seqLength];
      const logits = adapter.forward({ inputIds: tf.tensor2d(batch.inputIds, shape, "int32"), attentionMask: tf.tensor2d(batch.attentionMask, shape, "int32"), training: true });
      const logProbabilities = tf.sub(logits, tf.logSumExp(logits, -1, true));
      const picked = tf.mul(tf.cast(tf.oneHot(tf.tensor(targets[i]!.ids, shape, "int32"), vocab), "float32"), tf.tensor(targets[i]!.mask, [...shape, 1]));
      return tf.neg(tf.sum(tf.mul(logProbabilities, picked)));
    });
    return tf.div(tf.addN(sums), count) as tf.Scalar;
  }, variables);
  const result = { loss: value.dataSync()[0]!, gradients: variables.map((variable) => grads[variable.name]!.dataSync()) };
  tf.dispose([value, ...Object.values(grads)]);
  return result;
}

function expectSameGradients(actual: { loss: number; gradients: ArrayLike<number>[] }, expected: { loss: number; gradients: ArrayLike<number>[] }, tolerance: number) {
  expect(Math.abs(actual.loss - expected.loss) / expected.loss).toBeLessThan(1e-6);
  expect(actual.gradients).toHaveLength(expected.gradients.length);
  expected.gradients.forEach((gradient, i) => {
    expect(Math.max(...Array.from(gradient, Math.abs))).toBeGreaterThan(0);
    expect(relativeError(actual.gradients[i]!, gradient)).toBeLessThan(tolerance);
  });
}

describe("the loss over chunks of positions", () => {
  it("gives the loss and gradients of full logits, LoRA on lm_head included, over two micro-batches", () => {
    const batches = [tokenBatch(LLAMA.vocab_size, 2, 9, 1), tokenBatch(LLAMA.vocab_size, 1, 9, 2)];
    withLora(llama, { targetModules: ["q_proj", "v_proj", "lm_head"], r: 4, alpha: 8 }, Rng.fromSeed(3), (adapter) => {
      expectSameGradients(gradientsOf(adapter, batches), unchunkedGradientsOf(adapter, batches), 1e-5);
    });
  });
});

describe("gradient checkpointing", () => {
  for (const [name, getModel, options] of [
    ["Llama, LoRA on every linear module and lm_head, dropout 0.1", () => llama, { targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"], r: 4, alpha: 8, dropout: 0.1 }],
    ["GPT-2, LoRA on its Conv1D modules, dropout 0.1", () => gpt2, { targetModules: ["c_attn", "c_proj", "c_fc"], r: 2, alpha: 4, dropout: 0.1 }],
  ] as const) {
    it(`gives the same loss and gradients, and draws the same dropout masks (${name})`, () => {
      const model = getModel();
      const batches = [tokenBatch(model.config.vocabSize, 2, 10, 4)];
      const rng = Rng.fromSeed(3);
      withLora(model, options, rng, (adapter) => {
        const start = rng.state();
        const plain = gradientsOf(adapter, batches);
        const afterPlain = rng.state();
        rng.setState(start);
        const recomputed = gradientsOf(adapter, batches, true);
        expect(rng.state()).toEqual(afterPlain);
        expectSameGradients(recomputed, plain, 1e-5);
      });
    });
  }

  it("lowers the peak memory of a forward and backward pass by more than a third (4 layers)", async () => {
    const batches = [tokenBatch(LLAMA.vocab_size, 2, 64, 5)];
    const adapter = loraMethod.inject(llama, { targetModules: ["q_proj", "v_proj"], r: 4 }, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" });
    const peakBytes = async (gradientCheckpointing: boolean) => {
      const before = tf.memory().numBytes;
      const profile = await tf.profile(() => {
        const { loss, gradients } = lossAndGradients(adapter, batches, [...adapter.trainableVariables().values()], { gradientCheckpointing });
        tf.dispose([loss, ...gradients]);
      });
      expect(tf.memory().numBytes).toBe(before);
      return profile.peakBytes - before;
    };
    try {
      const plain = await peakBytes(false);
      const recomputed = await peakBytes(true);
      expect(recomputed).toBeLessThan((2 / 3) * plain);
    } finally {
      adapter.remove();
    }
  });
});

describe("trainStep", () => {
  it("reads back only the loss and the gradient norm, once, whatever the micro-batches and clipping", () => {
    const batches = [tokenBatch(LLAMA.vocab_size, 2, 8, 6), tokenBatch(LLAMA.vocab_size, 2, 8, 7)];
    withLora(llama, { r: 2 }, Rng.fromSeed(3), (adapter) => {
      const optimizer = new AdamW([...adapter.trainableVariables()].map(([name, variable]) => ({ name, variable, decay: true })));
      // Reads made by the step, the loss or the optimizer; CPU backends' attention reads its inputs by design.
      const readers: string[] = [];
      const dataSync = tf.Tensor.prototype.dataSync;
      const reads = vi.spyOn(tf.Tensor.prototype, "dataSync").mockImplementation(function (this: tf.Tensor) {
        // Frames: Error, this function, the spy, the caller.
        const caller = new Error().stack!.split("\n")[3] ?? "";
        if (/trainer\/(train|optim)\//.test(caller)) readers.push(caller.trim());
        return dataSync.call(this);
      });
      try {
        const result = trainStep(adapter, batches, { optimizer, learningRate: 1e-3, maxGradNorm: 1e-3 });
        expect(readers).toHaveLength(1);
        expect(result.gradNorm).toBeGreaterThan(1e-3);
        expect(result.loss).toBeGreaterThan(Math.log(LLAMA.vocab_size) / 2);
      } finally {
        reads.mockRestore();
        optimizer.dispose();
      }
    });
  });
});
