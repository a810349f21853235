import { readFile } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import type { BatchData, TokenBatch } from "../data/batching.ts";
import { doraMethod, stateFromPeftTensors } from "../methods/dora/model.ts";
import { fullMethod } from "../methods/full/model.ts";
import { loadModel } from "../model/loader.ts";
import { Rng } from "../random.ts";
import { readSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { relativeError } from "../testing/compare.ts";
import { TestFolderStore } from "../testing/folder-store.ts";
import { DpoObjective, dpoObjective } from "./dpo.ts";

/**
 * DPO against PyTorch and PEFT (tests/fixtures/hf/dpo, made by scripts/hf/make-dpo-fixture.py):
 * PEFT's DoRA adapter on a tiny Llama, two preference pairs, TRL's sigmoid loss with label
 * smoothing, the reference inside peft_model.disable_adapter(), and the gradients torch's
 * autograd gives for every adapter weight. For full fine-tuning (tests/fixtures/hf/dpo/full), the
 * reference log-probabilities precomputed from the initial model as TRL's
 * precompute_ref_log_probs does, a policy whose weights have moved, and torch's gradient of
 * every weight.
 */
const FIXTURES = path.resolve(import.meta.dirname, "../../tests/fixtures/hf");

interface Expected {
  beta: number;
  labelSmoothing: number;
  ids: number[][];
  mask: number[][];
  labels: number[][];
  policyLogps: number[];
  referenceLogps: number[];
  loss: number;
  gradients: Record<string, { shape: number[]; data: number[] }>;
}

beforeAll(async () => {
  await selectBackend("cpu");
});

describe("DPO against PyTorch and PEFT", () => {
  it("gives TRL's loss, PEFT's reference log-probabilities, and torch's gradients for a DoRA adapter", async () => {
    const source = path.join(FIXTURES, "methods/dora/llama");
    const expected = JSON.parse(await readFile(path.join(FIXTURES, "dpo/expected.json"), "utf8")) as Expected;
    const model = await loadModel(new TestFolderStore(path.join(source, "model")));
    const peftConfig = JSON.parse(await readFile(path.join(source, "adapter/adapter_config.json"), "utf8")) as Record<string, unknown>;
    const file = path.join(source, "adapter/adapter_model.safetensors");
    const options = { r: peftConfig.r as number, alpha: peftConfig.lora_alpha as number, targetModules: peftConfig.target_modules as string[] };
    const adapter = doraMethod.inject(model, options, { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" });
    try {
      adapter.loadState(stateFromPeftTensors(readSafetensors(await readFile(file), file).tensors, file));
      const rows = (from: number): TokenBatch => ({
        rows: 2,
        seqLength: expected.ids[0]!.length,
        inputIds: Int32Array.from(expected.ids.slice(from, from + 2).flat()),
        attentionMask: Int32Array.from(expected.mask.slice(from, from + 2).flat()),
        labels: Int32Array.from(expected.labels.slice(from, from + 2).flat()),
      });
      const objective = new DpoObjective({ beta: expected.beta, labelSmoothing: expected.labelSmoothing });
      const names = [...adapter.trainableVariables().keys()];
      const variables = [...adapter.trainableVariables().values()];
      const { loss, gradients, logProbabilities } = objective.lossAndGradients(adapter, [{ kind: "preference", chosen: rows(0), rejected: rows(2) }], variables);
      const [read] = logProbabilities;
      expect(relativeError([...read!.policyChosen, ...read!.policyRejected], expected.policyLogps)).toBeLessThan(1e-5);
      expect(relativeError([...read!.referenceChosen, ...read!.referenceRejected], expected.referenceLogps)).toBeLessThan(1e-5);
      expect(loss.dataSync()[0]).toBeCloseTo(expected.loss, 5);

      // torch's gradients, from PEFT's names and layouts to the adapter's variables.
      const peftGradients: TensorMap = new Map(Object.entries(expected.gradients).map(([name, { shape, data }]) => [name, { shape, data: Float32Array.from(data) }]));
      const torchGradients = stateFromPeftTensors(peftGradients, "expected.json");
      expect([...torchGradients.keys()].sort()).toEqual([...names].sort());
      names.forEach((name, i) => {
        const theirs = torchGradients.get(name)!.data;
        expect(Math.max(...Array.from(theirs, Math.abs)), name).toBeGreaterThan(0);
        expect(relativeError(gradients[i]!.dataSync(), theirs), name).toBeLessThan(1e-4);
      });
      tf.dispose([loss, ...gradients]);
    } finally {
      adapter.remove();
      model.dispose();
    }
  });

  it("with full fine-tuning, gives TRL's loss against precomputed reference log-probabilities, and torch's gradient of every weight", async () => {
    // The initial model gives the references; the policy is a model whose weights have moved (the DoRA adapter merged in).
    const expected = JSON.parse(await readFile(path.join(FIXTURES, "dpo/full/expected.json"), "utf8")) as Expected;
    const initialModel = await loadModel(new TestFolderStore(path.join(FIXTURES, "methods/dora/llama/model")));
    const policyModel = await loadModel(new TestFolderStore(path.join(FIXTURES, "dpo/full/model")));
    const context = { rng: Rng.fromSeed(3), baseModelNameOrPath: "tiny" };
    const initial = fullMethod.inject(initialModel, undefined, context);
    const policy = fullMethod.inject(policyModel, undefined, context);
    try {
      const rows = (from: number): TokenBatch => ({
        rows: 2,
        seqLength: expected.ids[0]!.length,
        inputIds: Int32Array.from(expected.ids.slice(from, from + 2).flat()),
        attentionMask: Int32Array.from(expected.mask.slice(from, from + 2).flat()),
        labels: Int32Array.from(expected.labels.slice(from, from + 2).flat()),
      });
      const batch: BatchData = { kind: "preference", chosen: rows(0), rejected: rows(2) };
      const objective = dpoObjective({ beta: expected.beta, labelSmoothing: expected.labelSmoothing }, policy);
      async function* once() {
        yield batch;
      }
      await objective.precomputeReference(initial, [once()]);
      const variables = policy.trainableVariables();
      const { loss, gradients, logProbabilities } = objective.lossAndGradients(policy, [batch], [...variables.values()]);
      const [read] = logProbabilities;
      expect(relativeError([...read!.referenceChosen, ...read!.referenceRejected], expected.referenceLogps)).toBeLessThan(1e-5);
      expect(relativeError([...read!.policyChosen, ...read!.policyRejected], expected.policyLogps)).toBeLessThan(1e-5);
      expect(loss.dataSync()[0]).toBeCloseTo(expected.loss, 5);

      expect([...variables.keys()].sort()).toEqual(Object.keys(expected.gradients).sort());
      [...variables.keys()].forEach((name, i) => {
        const { shape, data } = expected.gradients[name]!;
        // Kernels of nn.Linear weights are held [in, out]; torch's gradient is [out, in].
        const transposed = policyModel.linears.get(name.replace(/\.weight$/, ""))?.weightLayout === "linear";
        const ours = gradients[i]!.dataSync();
        const theirs = transposed ? Float32Array.from({ length: data.length }, (_, k) => data[(k % shape[0]!) * shape[1]! + Math.floor(k / shape[0]!)]!) : Float32Array.from(data);
        expect(Math.max(...Array.from(theirs, Math.abs)), name).toBeGreaterThan(0);
        expect(relativeError(ours, theirs), name).toBeLessThan(1e-4);
      });
      tf.dispose([loss, ...gradients]);
    } finally {
      initial.remove();
      policy.remove();
      initialModel.dispose();
      policyModel.dispose();
    }
  });
});
