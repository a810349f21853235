// Makes the quickstart's base model and dataset (npm run make:quickstart):
//   examples/quickstart/model/  config.json, model.safetensors, tokenizer.json, tokenizer_config.json
//   examples/quickstart/data/train.jsonl
//
// The model is a tiny Llama (4 layers, hidden 128, grouped-query attention, about 1M
// parameters) pretrained for a few minutes on text this project wrote itself
// (scripts/quickstart-text.ts), so model, tokenizer and data may all be redistributed.
//
// Honest note on the pretraining: the trainer has no full fine-tuning method yet, so this
// script takes a temporary all-trainable path. It builds the model from random weights, marks
// every weight variable trainable, and trains them with the trainer's own pieces: the data
// pipeline (text format, packing, shuffling), the step function (loss, backward, clipping),
// AdamW and the cosine schedule. It is deterministic for a given seed and backend.
//
//   node --import tsx scripts/make-quickstart-model.ts [--steps N] [--out DIR]
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import * as tf from "@tensorflow/tfjs-core";
import { LocalObjectStore } from "../storage/local-store.ts";
import { selectBackend } from "../trainer/backend/backend.ts";
import { DataLoader } from "../trainer/data/loader.ts";
import type { Adapter } from "../trainer/methods/method.ts";
import { parseModelConfig } from "../trainer/model/config.ts";
import { createModelFromStateDict, weightShapes } from "../trainer/model/loader.ts";
import type { CausalLM } from "../trainer/model/model.ts";
import { AdamW } from "../trainer/optim/adamw.ts";
import { learningRateAt } from "../trainer/optim/schedule.ts";
import { Rng } from "../trainer/random.ts";
import { writeSafetensors, type TensorMap } from "../trainer/safetensors/safetensors.ts";
import { byteLevelBpeTokenizerJson, tokenizerConfigJson, trainByteLevelBpe } from "../trainer/tokenizer/bpe-trainer.ts";
import { Tokenizer } from "../trainer/tokenizer/tokenizer.ts";
import { trainStep } from "../trainer/train/step.ts";
import { corpusDocuments, instructionRecords } from "./quickstart-text.ts";

const { values: args } = parseArgs({
  options: {
    steps: { type: "string", default: "1000" },
    out: { type: "string", default: path.join(import.meta.dirname, "../examples/quickstart") },
    seed: { type: "string", default: "1234" },
  },
});
const STEPS = Number(args.steps);
const SEED = Number(args.seed);
const OUT = path.resolve(args.out!);

const CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  // Set to the tokenizer's size once it is trained (below).
  vocab_size: 0,
  hidden_size: 128,
  intermediate_size: 352,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  hidden_act: "silu",
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  attention_bias: false,
  mlp_bias: false,
  bos_token_id: null,
  eos_token_id: 0,
  pad_token_id: 1,
  torch_dtype: "float32",
};
const SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"];
const BATCH_SIZE = 16;
const SEQ_LENGTH = 128;
const PEAK_LEARNING_RATE = 5e-3;
const WARMUP_STEPS = 50;

const backend = await selectBackend("cpu");
const started = performance.now();
const log = (message: string) => console.log(`[${((performance.now() - started) / 1000).toFixed(0).padStart(4)}s] ${message}`);

// 1. Text and tokenizer. The tokenizer learns from the corpus and the instruction data, so the
//    quickstart's prompts tokenize into whole words.
const documents = corpusDocuments(40_000, SEED);
const records = instructionRecords();
const bpe = trainByteLevelBpe([...documents, ...records.map((record) => record.prompt + record.completion)], {
  // The corpus is small: merges run out (minimum frequency 2) somewhat below this.
  vocabSize: 1024,
  specialTokens: SPECIAL_TOKENS,
});
const tokenizerJson = byteLevelBpeTokenizerJson(bpe);
const tokenizerConfig = tokenizerConfigJson({ eosToken: "<|endoftext|>", padToken: "<|pad|>", modelMaxLength: CONFIG.max_position_embeddings });
const tokenizer = Tokenizer.fromSources({ tokenizerJson, tokenizerConfig });
CONFIG.vocab_size = tokenizer.vocabSize;
log(`tokenizer: ${tokenizer.vocabSize} tokens (${bpe.merges.length} merges) from ${documents.length} documents`);

// 2. A random model whose every weight trains: the temporary all-trainable path.
const model = createModelFromStateDict(parseModelConfig(CONFIG), randomWeights(CONFIG, Rng.fromSeed(SEED)));
const weights = Object.values(tf.engine().registeredVariables);
for (const variable of weights) variable.trainable = true;
const fullModel = allWeights(model, weights);
const optimizer = new AdamW(
  weights.map((variable) => ({ name: variable.name, variable, decay: variable.rank === 2 })),
  { weightDecay: 0.01, beta2: 0.99 },
);
log(`model: ${model.parameterCount().toLocaleString("en-US")} parameters on ${backend}`);

// 3. Pretraining on packed 128-token blocks of the corpus.
const scratch = await mkdtemp(path.join(os.tmpdir(), "kubetune-quickstart-"));
await writeFile(path.join(scratch, "corpus.jsonl"), documents.map((text) => JSON.stringify({ text })).join("\n") + "\n");
const data = new DataLoader(
  { store: new LocalObjectStore(scratch), train: ["corpus.jsonl"] },
  { format: "text", maxSeqLength: SEQ_LENGTH, packing: true, seed: SEED, evalFraction: 0.01 },
  tokenizer,
);
const schedule = { type: "cosine" as const, learningRate: PEAK_LEARNING_RATE, warmupSteps: WARMUP_STEPS, totalSteps: STEPS };
let step = 0;
let recentLoss = 0;
for await (const batch of data.trainBatches(BATCH_SIZE)) {
  if (batch.kind !== "lm") throw new Error("expected language-model batches");
  const result = trainStep(fullModel, [batch.tokens], { optimizer, learningRate: learningRateAt(step, schedule), maxGradNorm: 1 });
  step += 1;
  recentLoss += result.loss;
  if (step % 50 === 0) {
    log(`step ${step}/${STEPS}: loss ${(recentLoss / 50).toFixed(3)} (epoch ${batch.epoch})`);
    recentLoss = 0;
  }
  if (step >= STEPS) break;
}
log(`eval loss ${(await evalLoss(fullModel, data)).toFixed(3)}`);

// 4. The model folder, and the instruction dataset the quickstart fine-tunes on.
const modelDir = path.join(OUT, "model");
await mkdir(modelDir, { recursive: true });
await writeFile(path.join(modelDir, "config.json"), `${JSON.stringify(CONFIG, null, 2)}\n`);
await writeFile(path.join(modelDir, "model.safetensors"), writeSafetensors(model.stateDict(), { metadata: { source: "kubetune scripts/make-quickstart-model.ts" } }));
await writeFile(path.join(modelDir, "tokenizer.json"), `${JSON.stringify(tokenizerJson)}\n`);
await writeFile(path.join(modelDir, "tokenizer_config.json"), `${JSON.stringify(tokenizerConfig, null, 2)}\n`);
await mkdir(path.join(OUT, "data"), { recursive: true });
await writeFile(path.join(OUT, "data", "train.jsonl"), records.map((record) => JSON.stringify(record)).join("\n") + "\n");
await rm(scratch, { recursive: true, force: true });
optimizer.dispose();
log(`wrote ${modelDir} and ${path.join(OUT, "data", "train.jsonl")} (${records.length} records)`);

/** Weights with the scale of a trained model: norms at 1, linear layers of variance 1/in, small embeddings. */
function randomWeights(config: typeof CONFIG, rng: Rng): TensorMap {
  const weights: TensorMap = new Map();
  for (const [name, shape] of weightShapes(parseModelConfig(config))) {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    if (name.endsWith("norm.weight")) data.fill(1);
    else if (name === "model.embed_tokens.weight") for (let i = 0; i < size; i++) data[i] = 0.02 * rng.normal();
    else for (let i = 0; i < size; i++) data[i] = rng.normal() / Math.sqrt(shape[1]!);
    weights.set(name, { shape: [...shape], data });
  }
  return weights;
}

/** The model itself as an "adapter" whose trainable variables are all its weights, for trainStep. */
function allWeights(base: CausalLM, variables: tf.Variable[]): Adapter {
  const unused = (what: string) => () => {
    throw new Error(`${what} is not used when pretraining the quickstart model`);
  };
  return {
    type: "full",
    model: base,
    forward: (inputs) => base.forward(inputs),
    trainableVariables: () => new Map(variables.map((variable) => [variable.name, variable])),
    trainableParameterCount: () => base.parameterCount(),
    exportTensors: () => base.stateDict(),
    adapterConfig: unused("adapterConfig"),
    merge: () => base.stateDict(),
    saveState: unused("saveState"),
    loadState: unused("loadState"),
    remove: unused("remove"),
  };
}

async function evalLoss(adapter: Adapter, loader: DataLoader): Promise<number> {
  const { evaluate } = await import("../trainer/train/loop.ts");
  return (await evaluate(adapter, loader, BATCH_SIZE))?.loss ?? Number.NaN;
}
