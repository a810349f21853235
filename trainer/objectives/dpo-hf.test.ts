import { readFile } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import type { TokenBatch } from "../data/batching.ts";
import { doraMethod, stateFromPeftTensors } from "../methods/dora/model.ts";
import { loadModel } from "../model/loader.ts";
import { Rng } from "../random.ts";
import { readSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { relativeError } from "../testing/compare.ts";
import { TestFolderStore } from "../testing/folder-store.ts";
import { DpoObjective } from "./dpo.ts";

/**
 * DPO against PyTorch and PEFT (tests/fixtures/hf/dpo, made by scripts/hf/make-dpo-fixture.py):
 * PEFT's DoRA adapter on a tiny Llama, two preference pairs, TRL's sigmoid loss with label
 * smoothing, the reference inside peft_model.disable_adapter(), and the gradients torch's
 * autograd gives for every adapter weight.
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
});
