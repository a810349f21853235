import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyDefaults, type FineTuneJob } from "../../../api/index.ts";
import { selectBackend } from "../../backend/backend.ts";
import { loadModel } from "../../model/loader.ts";
import type { CausalLM } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import { readSafetensors } from "../../safetensors/safetensors.ts";
import { TestFolderStore } from "../../testing/folder-store.ts";
import { loadTokenizer, type Tokenizer } from "../../tokenizer/tokenizer.ts";
import { runFineTuneJob } from "../../run.ts";
import { prefixMethod } from "../prefix/model.ts";
import { descriptionTokens } from "./model.ts";

/**
 * The claim for SK-tuning: at the same step budget it beats its own random-initialised
 * prefix on a small classification set. The set is classification as text on the quickstart
 * model (which has read sentences such as "the opposite of happy is sad"): a word, then " good"
 * or " bad". Both runs train a prefix of the same length with the same data, seed, steps and
 * learning rate; only the prefix's start differs. Measured on held-out words: eval loss, and
 * accuracy of the first token greedily predicted after "Label:".
 *
 * Measured (wasm, this machine), SK-tuning against random, eval loss / held-out accuracy:
 *   lr 0.01: 10 steps 7.41 / 0 against 7.71 / 0; 20 steps 5.84 / 0.33 against 6.43 / 0;
 *            30 steps 4.53 / 0.33 against 5.37 / 0; 60 steps 1.43 / 0.33 against 2.07 / 0
 *   lr 0.03: 10 steps 4.78 / 0.33 against 5.60 / 0; 30 steps 0.87 / 0.33 against 1.15 / 0.5;
 *            60 steps 0.38 / 0.67 against 0.32 / 0.83
 * The meaningful start pays off on short budgets; with a long budget at a high rate the random
 * prefix, whose N(0, 1) keys and values are far larger than the model's own, catches up.
 */

const MODEL = path.resolve("examples/quickstart/model");
const GOOD = ["happy", "good", "rich", "strong", "clean", "fast", "full", "light", "young", "open"];
const BAD = ["sad", "bad", "poor", "weak", "dirty", "slow", "empty", "dark", "old", "closed"];
const HELD_OUT = new Set(["light", "young", "open", "dark", "old", "closed"]);
const DESCRIPTION = "Tell whether each word is good or bad";
const record = (word: string) => ({ prompt: `Word: ${word}\nLabel:`, completion: GOOD.includes(word) ? " good" : " bad" });

let dir: string;
let model: CausalLM;
let tokenizer: Tokenizer;

beforeAll(async () => {
  await selectBackend("cpu");
  dir = await mkdtemp(path.join(tmpdir(), "kubetune-sk-classification-"));
  const words = [...GOOD, ...BAD];
  const lines = (subset: string[]) => subset.map((word) => JSON.stringify(record(word))).join("\n") + "\n";
  await writeFile(path.join(dir, "train.jsonl"), lines(words.filter((word) => !HELD_OUT.has(word))));
  await writeFile(path.join(dir, "eval.jsonl"), lines(words.filter((word) => HELD_OUT.has(word))));
  const store = new TestFolderStore(MODEL);
  model = await loadModel(store);
  tokenizer = await loadTokenizer(store, "");
});

afterAll(async () => {
  model.dispose();
  await rm(dir, { recursive: true, force: true });
});

async function train(name: string, method: FineTuneJob["spec"]["method"]): Promise<{ evalLoss: number; accuracy: number }> {
  const spec = applyDefaults({
    baseModel: { uri: MODEL },
    dataset: { train: "train.jsonl", eval: "eval.jsonl", format: "instruction", maxSeqLength: 32 },
    method,
    hyperparameters: { maxSteps: 30, batchSize: 7, learningRate: 0.01, scheduler: "constant", evalEverySteps: 1000, seed: 3 },
    output: { uri: `out-${name}` },
    checkpoint: { everySteps: 1000 },
    trainer: { backend: "cpu" },
  } as FineTuneJob["spec"]);
  const result = await runFineTuneJob(spec, { baseDir: dir, sample: false });
  if (result.status !== "completed") throw new Error(`${name} did not complete`);
  const evalLoss = result.metrics.eval.at(-1)!.loss;

  // The export, loaded back as a plain prefix (both runs export PEFT prefix tuning).
  const exported = readSafetensors(await readFile(path.join(dir, `out-${name}`, "adapter_model.safetensors")), "adapter_model.safetensors").tensors.get("prompt_embeddings")!;
  const adapter = prefixMethod.inject(model, { numVirtualTokens: exported.shape[0] }, { rng: Rng.fromSeed(1), baseModelNameOrPath: MODEL });
  adapter.loadState(new Map([["prompt_encoder.embedding.weight", exported]]));
  let correct = 0;
  for (const word of HELD_OUT) {
    const { prompt, completion } = record(word);
    const ids = tokenizer.encode(prompt);
    const predicted = tf.tidy(() => {
      const logits = adapter.forward({ inputIds: tf.tensor2d(ids, [1, ids.length], "int32") });
      return tf.argMax(tf.reshape(tf.slice(logits, [0, ids.length - 1, 0], [1, 1, -1]), [-1])).dataSync()[0]!;
    });
    if (predicted === tokenizer.encode(completion)[0]) correct++;
  }
  adapter.remove();
  return { evalLoss, accuracy: correct / HELD_OUT.size };
}

describe("SK-tuning against a random prefix on a small classification set (quickstart model)", () => {
  it("reaches a lower held-out loss and at least the same accuracy at the same step budget", async () => {
    const tokens = descriptionTokens(DESCRIPTION, tokenizer).length;
    const sk = await train("sk", { type: "skTuning", skTuning: { description: DESCRIPTION, variant: "prefix" } });
    const random = await train("random", { type: "prefix", prefix: { numVirtualTokens: tokens } });
    console.log(`SK-tuning prefix: eval loss ${sk.evalLoss.toFixed(4)}, accuracy ${sk.accuracy}; random prefix (${tokens} tokens): eval loss ${random.evalLoss.toFixed(4)}, accuracy ${random.accuracy}`);
    expect(sk.evalLoss).toBeLessThan(random.evalLoss);
    expect(sk.accuracy).toBeGreaterThanOrEqual(random.accuracy);
  }, 300_000);
});
