import { readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { loraMethod } from "../methods/lora/model.ts";
import { Rng } from "../random.ts";
import { logitsOf, sampleIds } from "../testing/compare.ts";
import type { FineTuneJob } from "../../api/index.ts";
import { runTinyJob, writeTinyJob, type TinyJob } from "../testing/tiny-job.ts";
import { TINY_GPT2, writeTinyModel } from "../testing/tiny-models.ts";
import type { ProgressEvent } from "../train/progress.ts";
import { loadModel } from "./loader.ts";
import { dropoutMask, type CausalLM } from "./model.ts";

/**
 * GPT-2's attn_pdrop, resid_pdrop and embd_pdrop (issue 9, defect 9): applied in training as
 * GPT2Model applies them, with masks from the model's dropoutRng so that a run and its resume or
 * recomputation draw the same ones.
 */

const BATCH = 2;
const SEQ = 5;
const IDS = sampleIds(BATCH, SEQ, TINY_GPT2.vocab_size);
const MASK = [
  [1, 1, 1, 1, 1],
  [1, 1, 1, 0, 0],
];
const { n_layer: LAYERS, n_head: HEADS, n_embd: HIDDEN } = TINY_GPT2;

const folders: string[] = [];
const models: CausalLM[] = [];

async function gpt2(dropout: { attn_pdrop?: number; resid_pdrop?: number; embd_pdrop?: number }): Promise<CausalLM> {
  const folder = await writeTinyModel({ ...TINY_GPT2, ...dropout }, { seed: 21 });
  folders.push(folder.dir);
  const model = await loadModel(folder.store);
  models.push(model);
  return model;
}

/** How many numbers a generator gives between two of its states (up to `limit`). */
function drawsBetween(before: readonly number[], after: readonly number[], limit = 100_000): number {
  const rng = Rng.fromState(before);
  for (let count = 0; count <= limit; count++) {
    if (rng.state().every((word, i) => word === after[i])) return count;
    rng.nextUint32();
  }
  throw new Error(`more than ${limit} draws`);
}

beforeAll(async () => {
  await selectBackend("cpu");
});

afterAll(async () => {
  for (const model of models) model.dispose();
  for (const dir of folders) await rm(dir, { recursive: true, force: true });
});

describe("GPT-2 dropout from config.json", () => {
  it("changes a training forward pass, and only that, where config.json sets it; each site draws one mask of its own shape", async () => {
    const sites = {
      embd_pdrop: BATCH * SEQ * HIDDEN,
      attn_pdrop: LAYERS * BATCH * HEADS * SEQ * SEQ,
      resid_pdrop: 2 * LAYERS * BATCH * SEQ * HIDDEN,
    };
    const plain = await gpt2({});
    const evaluation = logitsOf(plain, IDS, MASK);
    for (const [field, draws] of Object.entries(sites)) {
      const model = await gpt2({ [field]: 0.3 });
      model.dropoutRng = Rng.fromSeed(5);
      expect(logitsOf(model, IDS, MASK), field).toEqual(evaluation);
      const before = model.dropoutRng.state();
      const training = logitsOf(model, IDS, MASK, { training: true });
      expect(training, field).not.toEqual(evaluation);
      expect([field, drawsBetween(before, model.dropoutRng.state())]).toEqual([field, draws]);
    }
  });

  it("leaves a training pass equal to evaluation, drawing nothing, when every probability is 0", async () => {
    const model = await gpt2({});
    model.dropoutRng = Rng.fromSeed(5);
    const before = model.dropoutRng.state();
    expect(logitsOf(model, IDS, MASK, { training: true })).toEqual(logitsOf(model, IDS, MASK));
    expect(model.dropoutRng.state()).toEqual(before);
  });

  it("draws the same masks from the same generator state, so a resumed run computes the same pass", async () => {
    const model = await gpt2({ attn_pdrop: 0.1, resid_pdrop: 0.1, embd_pdrop: 0.1 });
    model.dropoutRng = Rng.fromSeed(8);
    const saved = model.dropoutRng.state();
    const first = logitsOf(model, IDS, MASK, { training: true });
    const second = logitsOf(model, IDS, MASK, { training: true });
    expect(second).not.toEqual(first);
    model.dropoutRng.setState(saved);
    expect(logitsOf(model, IDS, MASK, { training: true })).toEqual(first);
  });

  it("gives the same gradients under gradient checkpointing, which replays the masks, and leaves the generator where a plain pass does", async () => {
    const model = await gpt2({ attn_pdrop: 0.2, resid_pdrop: 0.2, embd_pdrop: 0.2 });
    model.dropoutRng = Rng.fromSeed(3);
    const adapter = loraMethod.inject(model, { r: 2 }, { rng: Rng.fromSeed(4), baseModelNameOrPath: "tiny" });
    try {
      // B starts at zero; give it values so gradients reach A too.
      const state = adapter.saveState();
      for (const [name, tensor] of state) if (name.endsWith("lora_B")) tensor.data = Rng.fromSeed(6).fillUniform(new Float32Array(tensor.data.length), -0.5, 0.5);
      adapter.loadState(state);
      const variables = [...adapter.trainableVariables().values()];
      const start = model.dropoutRng.state();
      const gradients = (gradientCheckpointing: boolean) => {
        model.dropoutRng!.setState(start);
        const { grads } = tf.variableGrads(
          () =>
            tf.tidy(() => {
              const logits = model.forward({
                inputIds: tf.tensor2d(IDS.flat(), [BATCH, SEQ], "int32"),
                attentionMask: tf.tensor2d(MASK.flat(), [BATCH, SEQ], "int32"),
                training: true,
                gradientCheckpointing,
              });
              return tf.sum(tf.mul(logits, tf.reshape(tf.linspace(-1, 1, logits.size), logits.shape))) as tf.Scalar;
            }),
          variables,
        );
        const values = variables.map((variable) => Array.from(grads[variable.name]!.dataSync()));
        tf.dispose(Object.values(grads));
        return { values, end: model.dropoutRng!.state() };
      };
      const plain = gradients(false);
      const recomputed = gradients(true);
      expect(recomputed.values).toEqual(plain.values);
      expect(recomputed.end).toEqual(plain.end);
    } finally {
      adapter.remove();
    }
  });

  it("refuses to train with dropout and no generator, saying what to set", async () => {
    const model = await gpt2({ resid_pdrop: 0.1 });
    expect(() => logitsOf(model, IDS, MASK, { training: true })).toThrow(
      "model forward: training with residual dropout 0.1 (config.json) needs a random generator; set the model's dropoutRng",
    );
  });
});

describe("a GPT-2 job with dropout in config.json", () => {
  const SPEC: Partial<FineTuneJob["spec"]> = {
    method: { type: "lora", lora: { r: 4, alpha: 8 } },
    hyperparameters: { maxSteps: 6, batchSize: 2, learningRate: 0.01, seed: 3 },
    checkpoint: { everySteps: 3, keep: 2 },
  };

  async function gpt2Job(dropout: number): Promise<TinyJob> {
    const job = await writeTinyJob({ family: "gpt2", spec: SPEC });
    folders.push(job.dir);
    const configPath = path.join(job.dir, "model", "config.json");
    const config = JSON.parse(await readFile(configPath, "utf8")) as Record<string, unknown>;
    await writeFile(configPath, JSON.stringify({ ...config, attn_pdrop: dropout, resid_pdrop: dropout, embd_pdrop: dropout }));
    return job;
  }

  const losses = (events: ProgressEvent[]) => events.flatMap((event) => (event.event === "step" ? [event.loss] : []));

  it("trains with it, and a stopped run resumes to the same adapter, byte for byte", async () => {
    const withoutDropout = await runTinyJob(await gpt2Job(0));
    const straightJob = await gpt2Job(0.1);
    const straight = await runTinyJob(straightJob);
    expect(straight.result.status).toBe("completed");
    // Dropout changes the first step's loss already (the same data, weights and adapter otherwise).
    expect(losses(straight.events)[0]).not.toBe(losses(withoutDropout.events)[0]);

    const interruptedJob = await gpt2Job(0.1);
    const controller = new AbortController();
    const first = await runTinyJob(interruptedJob, {}, { signal: controller.signal, onProgress: (event) => event.event === "step" && event.step === 3 && controller.abort() });
    expect(first.result).toMatchObject({ status: "stopped", step: 3 });
    const second = await runTinyJob(interruptedJob);
    expect(second.result.status).toBe("completed");
    const adapter = (job: TinyJob) => readFile(path.join(job.dir, "out", "adapter_model.safetensors"));
    expect(await adapter(interruptedJob)).toEqual(await adapter(straightJob));
    expect([...losses(first.events), ...losses(second.events)]).toEqual(losses(straight.events));
  });
});

describe("dropout masks", () => {
  it("keep each value with probability 1 - rate and scale it by 1 / (1 - rate), as torch's dropout", () => {
    const rate = 0.3;
    const values = tf.tidy(() => dropoutMask([200, 500], rate, Rng.fromSeed(11), "test").dataSync());
    const zeros = values.filter((value) => value === 0).length;
    // 100,000 Bernoulli draws: the standard deviation of the share is 0.0014.
    expect(Math.abs(zeros / values.length - rate)).toBeLessThan(0.006);
    expect(new Set(values.filter((value) => value !== 0))).toEqual(new Set([Math.fround(1 / (1 - rate))]));
  });
});
