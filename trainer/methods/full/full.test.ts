import { readFile, readdir, rm } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { describe, expect, it } from "vitest";
import { LocalObjectStore } from "../../../storage/local-store.ts";
import { loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { logitsOf, relativeError } from "../../testing/compare.ts";
import { checkGradients, float64Weights } from "../../testing/finite-differences.ts";
import { SAMPLE_IDS as IDS, SAMPLE_MASK as MASK, injectForTest, tensorIds, useTinyLlamaAndGpt2, usingAdapter } from "../../testing/method-tests.ts";
import { lossesOfTinyRun, resumedAndStraightOutputs } from "../../testing/method-training.ts";
import { referenceGpt2Logits, referenceLlamaLogits, type ReferenceWeights } from "../../testing/reference.ts";
import { runTinyJob, writeTinyJob } from "../../testing/tiny-job.ts";
import { continuation } from "../../train/sample.ts";
import { lossAndGradients } from "../../train/step.ts";
import { loadTokenizer } from "../../tokenizer/tokenizer.ts";
import { getMethod } from "../registry.ts";
import { fullMethod, type FullFineTuning } from "./model.ts";

const tiny = useTinyLlamaAndGpt2();

/** With full fine-tuning on `model`, runs `body`, then freezes the model again. */
function withFull<T>(model: CausalLM, body: (adapter: FullFineTuning) => T): T {
  return usingAdapter(injectForTest<FullFineTuning>(fullMethod, model, {}), body);
}

describe("full fine-tuning", () => {
  it("is the registry's full method: every weight trains, the model is unchanged at step 0, and remove() freezes it again", () => {
    expect(getMethod("full")).toBe(fullMethod);
    for (const model of [tiny.llama, tiny.gpt2]) {
      const base = logitsOf(model, IDS, MASK);
      withFull(model, (adapter) => {
        expect(adapter.trainsBaseWeights).toBe(true);
        expect(adapter.trainableParameterCount()).toBe(model.parameterCount());
        expect([...adapter.trainableVariables().keys()].sort()).toEqual([...model.stateDict().keys()].sort());
        expect(relativeError(logitsOf(model, IDS, MASK), base)).toBeLessThan(1e-6);
      });
      for (const module of model.linears.values()) {
        expect(module.kernel.trainable).toBe(false);
        expect(module.wrapper).toBeUndefined();
      }
    }
    expect(() => fullMethod.inject(tiny.llama, { r: 8 }, { rng: Rng.fromSeed(1), baseModelNameOrPath: "x" })).toThrow('spec.method: full fine-tuning has no options, got {"r":8}');
  });

  /**
   * dL/dθ for every kind of weight (embeddings through gather, norms, attention and MLP kernels,
   * biases, GPT-2's position embeddings and its output head tied to the token embeddings)
   * against finite differences of the float64 reference from the same weights.
   */
  for (const family of ["llama", "gpt2"] as const) {
    it(`gradients of every weight match finite differences of the float64 reference (${family})`, () => {
      const model = family === "llama" ? tiny.llama : tiny.gpt2;
      const folder = family === "llama" ? tiny.llamaFolder : tiny.gpt2Folder;
      const reference = family === "llama" ? referenceLlamaLogits : referenceGpt2Logits;
      withFull(model, (adapter) => {
        const variables = adapter.trainableVariables();
        // Kernels of nn.Linear weights are held [in, out]; the reference reads Hugging Face's [out, in].
        const transposed = (name: string) => model.linears.get(name.replace(/\.weight$/, ""))?.weightLayout === "linear";
        const result = checkGradients({
          forward: () => model.forward({ inputIds: tensorIds(IDS), attentionMask: tensorIds(MASK) }),
          variables,
          stride: 29,
          referenceLogits: (values) => {
            const weights = float64Weights(folder.weights);
            for (const [name, data] of values) {
              const target = weights.get(name) ?? weights.get(name.replace(/^transformer\./, ""));
              if (!target) throw new Error(`no reference weight for ${name}`);
              if (!transposed(name)) {
                target.data.set(data);
                continue;
              }
              const [out, inFeatures] = target.shape as [number, number];
              for (let o = 0; o < out; o++) for (let i = 0; i < inFeatures; i++) target.data[o * inFeatures + i] = data[i * out + o]!;
            }
            return reference(folder.config, weights as ReferenceWeights, { ids: IDS, mask: MASK }).flat(2);
          },
        });
        expect(Math.abs(result.value - result.referenceValue) / Math.abs(result.referenceValue)).toBeLessThan(1e-5);
        expect(result.analytic.length).toBeGreaterThan(300);
        expect(Math.max(...result.numeric.map(Math.abs))).toBeGreaterThan(1e-2);
        expect(relativeError(result.analytic, result.numeric)).toBeLessThan(1e-4);
      });
    });
  }

  it("the training step's chunked loss (with and without gradient checkpointing) gives every weight the gradient of the plain forward pass (GPT-2, tied head)", () => {
    withFull(tiny.gpt2, (adapter) => {
      const ids = IDS.flat();
      const batch = { rows: 2, seqLength: 6, inputIds: Int32Array.from(ids), attentionMask: Int32Array.from(MASK.flat()), labels: Int32Array.from(ids.map((id, i) => (MASK.flat()[i] ? id : -100))) };
      const variables = [...adapter.trainableVariables().values()];
      // The mean next-token cross-entropy from the logits, differentiated by tfjs directly.
      const direct = tf.variableGrads(() =>
        tf.tidy(() => {
          const logits = tiny.gpt2.forward({ inputIds: tensorIds(IDS), attentionMask: tensorIds(MASK), training: true });
          const logProbs = tf.logSoftmax(tf.slice(logits, [0, 0, 0], [2, 5, logits.shape[2]]));
          const targets = IDS.map((row) => row.slice(1));
          const weights = MASK.map((row) => row.slice(1));
          const picked = tf.sum(tf.mul(logProbs, tf.mul(tf.oneHot(tf.tensor2d(targets.flat(), [2, 5], "int32"), logits.shape[2]), tf.expandDims(tf.tensor2d(weights.flat(), [2, 5]), 2))));
          return tf.div(tf.neg(picked), weights.flat().reduce((a, b) => a + b, 0)) as tf.Scalar;
        }),
        variables,
      );
      for (const gradientCheckpointing of [false, true]) {
        const { loss, gradients } = lossAndGradients(adapter, [batch], variables, { gradientCheckpointing });
        expect(relativeError(loss.dataSync(), direct.value.dataSync())).toBeLessThan(1e-5);
        variables.forEach((variable, i) => expect(relativeError(gradients[i]!.dataSync(), direct.grads[variable.name]!.dataSync()), variable.name).toBeLessThan(1e-4));
        tf.dispose([loss, ...gradients]);
      }
      tf.dispose([direct.value, ...Object.values(direct.grads)]);
    });
  });

  it("lowers the loss on a learnable task (GPT-2, whose output head stays tied to the embeddings)", async () => {
    const { first, last } = await lossesOfTinyRun({ type: "full" }, { family: "gpt2", learningRate: 0.003 });
    expect(last).toBeLessThan(first / 2);
  });

  it("writes a whole model folder that loads as a model and computes what the trained weights compute", async () => {
    const job = await writeTinyJob();
    try {
      const { result, events } = await runTinyJob(
        job,
        { method: { type: "full" }, hyperparameters: { maxSteps: 3, batchSize: 4, learningRate: 0.01, seed: 7 } },
        { sample: true, samplePrompt: "The cat" },
      );
      if (result.status !== "completed") throw new Error("expected a completed run");
      const out = path.join(job.dir, "out");
      const files = await readdir(out);
      expect(files).toEqual(expect.arrayContaining(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_metrics.json"]));
      expect(files).not.toContain("adapter_config.json");
      expect(await readFile(path.join(out, "config.json"))).toEqual(await readFile(path.join(job.dir, "model", "config.json")));
      const base = await loadModel(new LocalObjectStore(path.join(job.dir, "model")));
      const trained = await loadModel(new LocalObjectStore(out));
      try {
        // The sample's "before" is the base model's continuation, decoded before training changed the weights.
        const tokenizer = await loadTokenizer(new LocalObjectStore(path.join(job.dir, "model")), "");
        const baseText = withFull(base, (adapter) => continuation(adapter, tokenizer, tokenizer.encode("The cat", { addSpecialTokens: false }), { maxLength: 32 }));
        expect(result.metrics.sample).toMatchObject({ prompt: "The cat", base: baseText });
        expect(trained.parameterCount()).toBe(base.parameterCount());
        expect(relativeError(logitsOf(trained, IDS, MASK), logitsOf(base, IDS, MASK))).toBeGreaterThan(1e-3);
      } finally {
        base.dispose();
        trained.dispose();
      }
      expect(result.outputs).toMatchObject({ trainableShare: 1, loadableBy: ["Transformers", "vLLM"] });
      expect(result.outputs.totalParameters).toBe(result.outputs.trainableParameters);
      expect(events.find((event) => event.event === "start")).toMatchObject({ trainableShare: 1 });
    } finally {
      await rm(job.dir, { recursive: true, force: true });
    }
  });

  it("resumes from a checkpoint (weights and AdamW moments of every weight) to the same model, byte for byte", async () => {
    const { straight, resumed, resumedFrom } = await resumedAndStraightOutputs({ type: "full" }, ["model.safetensors"]);
    expect(resumedFrom).toBe(4);
    expect(resumed).toEqual(straight);
  });
});
