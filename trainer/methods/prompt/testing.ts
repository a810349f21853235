import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { adapterFiles } from "../../output/output.ts";
import { readSafetensors, type TensorMap } from "../../safetensors/safetensors.ts";
import { TestFolderStore } from "../../testing/folder-store.ts";
import type { Adapter } from "../method.ts";

/**
 * Test helpers of the prompt-learning methods: the Hugging Face PEFT fixtures written by
 * scripts/hf/make-prompt-fixtures.py, and that script's --check-export mode, which loads an
 * export of the trainer into PEFT.
 */

export const FIXTURES = path.resolve("tests/fixtures/hf/methods");

export interface PeftFixture {
  model: CausalLM;
  /** The adapter PEFT saved: prompt_embeddings. */
  adapter: TensorMap;
  adapterConfig: Record<string, unknown>;
  ids: number[][];
  mask: number[][];
  shape: number[];
  /** PEFT's logits for the input's own positions, flattened. */
  logits: number[];
  maxBaseDifference: number;
  extra: Record<string, unknown>;
}

export async function loadFixture(method: "prefix" | "prompt", name: string): Promise<PeftFixture> {
  const dir = path.join(FIXTURES, method, name);
  const model = await loadModel(new TestFolderStore(path.join(dir, "model")));
  const adapter = readSafetensors(await readFile(path.join(dir, "adapter", "adapter_model.safetensors")), "adapter_model.safetensors").tensors;
  const adapterConfig = JSON.parse(await readFile(path.join(dir, "adapter", "adapter_config.json"), "utf8")) as Record<string, unknown>;
  const { ids, mask, shape, logits, maxBaseDifference, ...extra } = JSON.parse(await readFile(path.join(dir, "expected.json"), "utf8"));
  return { model, adapter, adapterConfig, ids, mask, shape, logits, maxBaseDifference, extra };
}

/** The adapter's logits for plain arrays, flattened. */
export function adapterLogits(adapter: Adapter, ids: number[][], mask?: number[][]): Float32Array {
  return tf.tidy(() => {
    const shape: [number, number] = [ids.length, ids[0]!.length];
    return adapter.forward({
      inputIds: tf.tensor2d(ids.flat(), shape, "int32"),
      ...(mask ? { attentionMask: tf.tensor2d(mask.flat(), shape, "int32") } : {}),
    }).dataSync() as Float32Array;
  });
}

/** The Hugging Face venv's interpreter, or undefined when it has not been made on this machine. */
export function huggingFacePython(): string | undefined {
  try {
    return execFileSync("bash", ["scripts/python-env.sh", "--check", "scripts/python-requirements.txt", "scripts/python-requirements-hf.txt"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {
    return undefined;
  }
}

export interface PeftCheck {
  keys: string[];
  peftType: string;
  shape: number[];
  logits: number[];
  loss?: number;
}

/**
 * Writes the adapter's files as a job's output would hold them, loads them into PEFT on top of
 * the model folder `modelDir`, and returns PEFT's logits (and loss, given labels). The script
 * fails on any missing or unexpected key.
 */
export async function checkInPeft(
  python: string,
  adapter: Adapter,
  modelDir: string,
  inputs: { ids: number[][]; mask: number[][]; labels?: number[][] },
): Promise<PeftCheck> {
  const dir = await mkdtemp(path.join(tmpdir(), "kubetune-peft-check-"));
  try {
    for (const [name, content] of Object.entries(adapterFiles(adapter))) await writeFile(path.join(dir, name), content);
    await writeFile(path.join(dir, "inputs.json"), JSON.stringify(inputs));
    const output = execFileSync(python, ["scripts/hf/make-prompt-fixtures.py", "--check-export", modelDir, dir, path.join(dir, "inputs.json")], {
      encoding: "utf8",
      env: { ...process.env, OMP_NUM_THREADS: "1" },
    });
    return JSON.parse(output.trim().split("\n").at(-1)!) as PeftCheck;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
