import { rm, stat, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { Rng } from "../random.ts";
import { logitsOf, relativeError, sampleIds } from "../testing/compare.ts";
import { referenceGpt2Logits, referenceLlamaLogits, type ReferenceInputs } from "../testing/reference.ts";
import { TINY_GEMMA3, TINY_GPT2, TINY_LLAMA, TINY_PHI3, TINY_QWEN3, writeTinyModel, type TinyModel, type TinyModelOptions } from "../testing/tiny-models.ts";
import { createModelFromStateDict, loadModel } from "./loader.ts";
import type { CausalLM } from "./model.ts";

/** The issue asks for 1e-4; float32 against float64 measures about 1e-6 here, so 1e-5 still catches small mistakes. */
const MAX_RELATIVE_ERROR = 1e-5;

const folders: string[] = [];

async function tiny(config: Record<string, unknown>, options: TinyModelOptions = {}): Promise<TinyModel> {
  const model = await writeTinyModel(config, options);
  folders.push(model.dir);
  return model;
}

beforeAll(async () => {
  await selectBackend("cpu");
});

afterAll(async () => {
  for (const dir of folders) await rm(dir, { recursive: true, force: true });
});

const IDS = sampleIds(2, 7, 53);
/** Right padding: the second sequence has 5 real tokens. */
const MASK = [
  [1, 1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 1, 0, 0],
];

/** Logits of the loaded model against the float64 reference, as a relative error. */
async function llamaError(config: Record<string, unknown>, options: TinyModelOptions = {}, inputs: ReferenceInputs = { ids: IDS, mask: MASK }) {
  const folder = await tiny(config, options);
  const model = await loadModel(folder.store);
  try {
    const expected = referenceLlamaLogits(config, folder.weights, inputs).flat(2);
    return relativeError(logitsOf(model, inputs.ids, inputs.mask), expected);
  } finally {
    model.dispose();
  }
}

describe("Llama family logits match the float64 reference", () => {
  it("Llama with grouped-query attention and an untied head, with a padding mask", async () => {
    expect(await llamaError(TINY_LLAMA)).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("Qwen2 with qkv bias, tied embeddings and linear rope scaling", async () => {
    const config = {
      ...TINY_LLAMA,
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      tie_word_embeddings: true,
      rope_scaling: { type: "linear", factor: 2 },
      use_sliding_window: false,
      sliding_window: 4,
    };
    expect(await llamaError(config)).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("Llama with attention and MLP biases, an explicit head_dim and llama3 rope scaling in all three bands", async () => {
    const config = {
      ...TINY_LLAMA,
      hidden_size: 24,
      head_dim: 8,
      num_key_value_heads: 1,
      attention_bias: true,
      mlp_bias: true,
      rope_scaling: { rope_type: "llama3", factor: 4, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
    };
    expect(await llamaError(config)).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("Mistral from F16 and BF16 shards listed in model.safetensors.index.json", async () => {
    const config = { ...TINY_LLAMA, architectures: ["MistralForCausalLM"], model_type: "mistral", sliding_window: null };
    expect(await llamaError(config, { shards: 3, dtypes: ["F16", "BF16", "F32"] })).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("Mistral with a sliding window shorter than the input", async () => {
    const config = { ...TINY_LLAMA, architectures: ["MistralForCausalLM"], model_type: "mistral", sliding_window: 3 };
    expect(await llamaError(config)).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("Qwen3 with q/k norms, a head_dim apart from hidden / heads, and attention bias", async () => {
    expect(await llamaError({ ...TINY_QWEN3, attention_bias: true })).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("Gemma 3 text: (1 + w) norms around both sublayers, scaled embeddings, GELU, its attention scalar, sliding layers with a local rotary base", async () => {
    expect(await llamaError(TINY_GEMMA3)).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("Phi-3: fused qkv_proj and gate_up_proj, rotary on half of each head, a sliding window", async () => {
    expect(await llamaError(TINY_PHI3)).toBeLessThan(MAX_RELATIVE_ERROR);
  });

  it("keys and values given as a prefix to Gemma 3, counted in its sliding window", async () => {
    const rng = Rng.fromSeed(6);
    const prefixLength = 2;
    const random = () => [Array.from({ length: TINY_GEMMA3.num_key_value_heads }, () =>
      Array.from({ length: prefixLength }, () => Array.from({ length: TINY_GEMMA3.head_dim }, () => Math.fround(rng.uniform(-1, 1)))))];
    const prefix = Array.from({ length: TINY_GEMMA3.num_hidden_layers }, () => ({ key: random(), value: random() }));
    const folder = await tiny(TINY_GEMMA3);
    const model = await loadModel(folder.store);
    const pastKeyValuesPrefix = prefix.map(({ key, value }) => ({ key: tf.tensor4d(key), value: tf.tensor4d(value) }));
    const actual = logitsOf(model, IDS, MASK, { pastKeyValuesPrefix });
    const expected = referenceLlamaLogits(TINY_GEMMA3, folder.weights, { ids: IDS, mask: MASK, prefix }).flat(2);
    expect(relativeError(actual, expected)).toBeLessThan(MAX_RELATIVE_ERROR);
    tf.dispose(pastKeyValuesPrefix.flatMap(({ key, value }) => [key, value]));
    model.dispose();
  });

  it("keys and values given as a prefix, with positions starting after it", async () => {
    const rng = Rng.fromSeed(5);
    const prefixLength = 3;
    const headDim = TINY_LLAMA.hidden_size / TINY_LLAMA.num_attention_heads;
    const random = () => Array.from({ length: 1 }, () =>
      Array.from({ length: TINY_LLAMA.num_key_value_heads }, () =>
        Array.from({ length: prefixLength }, () => Array.from({ length: headDim }, () => Math.fround(rng.uniform(-1, 1))))));
    const prefix = Array.from({ length: TINY_LLAMA.num_hidden_layers }, () => ({ key: random(), value: random() }));
    const folder = await tiny(TINY_LLAMA);
    const model = await loadModel(folder.store);
    const pastKeyValuesPrefix = prefix.map(({ key, value }) => ({ key: tf.tensor4d(key), value: tf.tensor4d(value) }));
    const actual = logitsOf(model, IDS, MASK, { pastKeyValuesPrefix });
    const expected = referenceLlamaLogits(TINY_LLAMA, folder.weights, { ids: IDS, mask: MASK, prefix }).flat(2);
    expect(relativeError(actual, expected)).toBeLessThan(MAX_RELATIVE_ERROR);
    tf.dispose(pastKeyValuesPrefix.flatMap(({ key, value }) => [key, value]));
    model.dispose();
  });
});

describe("GPT-2 logits match the float64 reference", () => {
  it("GPT2LMHeadModel weights (Conv1D [in, out]) with a padding mask", async () => {
    const folder = await tiny(TINY_GPT2);
    const model = await loadModel(folder.store);
    const expected = referenceGpt2Logits(TINY_GPT2, folder.weights, { ids: IDS, mask: MASK }).flat(2);
    expect(relativeError(logitsOf(model, IDS, MASK), expected)).toBeLessThan(MAX_RELATIVE_ERROR);
    model.dispose();
  });

  it("weights without the transformer. prefix, as the original gpt2 checkpoint stores them, and exact GELU", async () => {
    const config = { ...TINY_GPT2, activation_function: "gelu", n_inner: 40 };
    const folder = await tiny(config, { stripTransformerPrefix: true });
    expect(folder.weights.has("h.0.attn.c_attn.weight")).toBe(true);
    const model = await loadModel(folder.store);
    const expected = referenceGpt2Logits(config, folder.weights, { ids: IDS }).flat(2);
    expect(relativeError(logitsOf(model, IDS), expected)).toBeLessThan(MAX_RELATIVE_ERROR);
    model.dispose();
  });
});

describe("model structure", () => {
  let llama: CausalLM;
  let gpt2: CausalLM;
  let llamaFolder: TinyModel;

  beforeAll(async () => {
    llamaFolder = await tiny(TINY_LLAMA);
    llama = await loadModel(llamaFolder.store);
    gpt2 = await loadModel((await tiny(TINY_GPT2)).store);
  });

  afterAll(() => {
    llama.dispose();
    gpt2.dispose();
  });

  it("names every linear module by its Hugging Face module path", () => {
    const llamaLayer0 = [...llama.linears.keys()].filter((name) => name.startsWith("model.layers.0."));
    expect(llamaLayer0).toEqual([
      "model.layers.0.self_attn.q_proj",
      "model.layers.0.self_attn.k_proj",
      "model.layers.0.self_attn.v_proj",
      "model.layers.0.self_attn.o_proj",
      "model.layers.0.mlp.gate_proj",
      "model.layers.0.mlp.up_proj",
      "model.layers.0.mlp.down_proj",
    ]);
    expect(llama.linears.size).toBe(2 * 7 + 1);
    expect(llama.outputHead.path).toBe("lm_head");
    expect([...gpt2.linears.keys()].filter((name) => name.startsWith("transformer.h.1."))).toEqual([
      "transformer.h.1.attn.c_attn",
      "transformer.h.1.attn.c_proj",
      "transformer.h.1.mlp.c_fc",
      "transformer.h.1.mlp.c_proj",
    ]);
    const cAttn = gpt2.linears.get("transformer.h.0.attn.c_attn")!;
    expect([cAttn.inFeatures, cAttn.outFeatures, cAttn.weightLayout]).toEqual([24, 72, "conv1d"]);
  });

  it("keeps every base weight frozen", () => {
    for (const model of [llama, gpt2]) {
      for (const module of model.linears.values()) {
        expect(module.kernel.trainable).toBe(false);
        if (module.bias) expect(module.bias.trainable).toBe(false);
      }
    }
  });

  it("gives its weights back as the state dict it was loaded from, bit for bit", () => {
    const stateDict = llama.stateDict();
    expect([...stateDict.keys()].sort()).toEqual([...llamaFolder.weights.keys()].sort());
    for (const [name, tensor] of llamaFolder.weights) {
      expect(stateDict.get(name)!.shape).toEqual(tensor.shape);
      expect(Buffer.from(stateDict.get(name)!.data.buffer).equals(Buffer.from(tensor.data.buffer))).toBe(true);
    }
    expect(llama.parameterCount()).toBe([...stateDict.values()].reduce((sum, t) => sum + t.data.length, 0));
  });

  it("rebuilds an identical model from its state dict", () => {
    const copy = createModelFromStateDict(llama.config, llama.stateDict());
    expect(logitsOf(copy, IDS, MASK)).toEqual(logitsOf(llama, IDS, MASK));
    copy.dispose();
  });

  it("accepts input embeddings in place of ids", () => {
    const fromEmbeddings = tf.tidy(() => {
      const ids = tf.tensor2d(IDS.flat(), [2, 7], "int32");
      return llama.forward({ inputsEmbeds: llama.embed(ids) }).dataSync();
    });
    expect(fromEmbeddings).toEqual(logitsOf(llama, IDS));
  });

  it("gives the final hidden states with skipOutputHead, to which the output head gives the logits exactly", () => {
    for (const model of [llama, gpt2]) {
      const { hidden, logits } = tf.tidy(() => {
        const states = model.forward({ inputIds: tf.tensor2d(IDS.flat(), [2, 7], "int32"), skipOutputHead: true });
        const context = { training: false, disableAdapters: false };
        return { hidden: states.shape, logits: model.outputHead.forward(states, context).dataSync() };
      });
      expect(hidden).toEqual([2, 7, model.config.hiddenSize]);
      expect(logits).toEqual(logitsOf(model, IDS));
    }
  });

  it("gives the same logits, bit for bit, under gradient checkpointing (which changes only the backward pass), and frees its tensors", () => {
    for (const model of [llama, gpt2]) {
      const plain = logitsOf(model, IDS, MASK);
      const before = tf.memory().numTensors;
      expect(logitsOf(model, IDS, MASK, { gradientCheckpointing: true })).toEqual(plain);
      expect(tf.memory().numTensors).toBe(before);
    }
  });

  it("frees every temporary tensor of a forward pass", () => {
    logitsOf(llama, IDS, MASK);
    const before = tf.memory().numTensors;
    logitsOf(llama, IDS, MASK);
    logitsOf(gpt2, IDS);
    expect(tf.memory().numTensors).toBe(before);
  });

  it("refuses more positions than GPT-2 has", () => {
    expect(() => logitsOf(gpt2, sampleIds(1, 40, 53))).toThrow("model forward: 40 positions exceed GPT-2's n_positions (32)");
  });
});

describe("loading a broken model folder", () => {
  it("names a truncated safetensors file", async () => {
    const folder = await tiny(TINY_LLAMA);
    const file = path.join(folder.dir, "model.safetensors");
    await truncate(file, (await stat(file)).size - 100);
    await expect(loadModel(folder.store)).rejects.toThrow(/^model\.safetensors: tensor ".*": data_offsets \[\d+, \d+\] run past the end of the data/);
  });

  it("names a config.json field that is missing", async () => {
    const folder = await tiny(TINY_LLAMA);
    const { hidden_size: _, ...withoutHidden } = TINY_LLAMA;
    await writeFile(path.join(folder.dir, "config.json"), JSON.stringify(withoutHidden));
    await expect(loadModel(folder.store)).rejects.toThrow('config.json: missing field "hidden_size"');
  });

  it("names an unknown architecture and lists the supported ones", async () => {
    const folder = await tiny(TINY_LLAMA);
    await writeFile(path.join(folder.dir, "config.json"), JSON.stringify({ ...TINY_LLAMA, architectures: ["FalconForCausalLM"] }));
    await expect(loadModel(folder.store)).rejects.toThrow(
      'config.json: unsupported architecture "FalconForCausalLM"; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, GPT2LMHeadModel',
    );
    const model = await loadModel(folder.store, { architecture: "llama" });
    expect(model.config.architecture).toBe("LlamaForCausalLM");
    model.dispose();
  });

  it("names a tensor whose shape disagrees with config.json", async () => {
    const folder = await tiny(TINY_LLAMA);
    await writeFile(path.join(folder.dir, "config.json"), JSON.stringify({ ...TINY_LLAMA, intermediate_size: 40 }));
    await expect(loadModel(folder.store)).rejects.toThrow(
      'model.safetensors: tensor "model.layers.0.mlp.gate_proj.weight" has shape [48, 32], but config.json implies [40, 32]',
    );
  });

  it("names a tensor the file lacks", async () => {
    const folder = await tiny(TINY_LLAMA);
    await writeFile(path.join(folder.dir, "config.json"), JSON.stringify({ ...TINY_LLAMA, attention_bias: true }));
    await expect(loadModel(folder.store)).rejects.toThrow(
      'model.safetensors: missing tensor "model.layers.0.self_attn.q_proj.bias" (expected shape [32] from config.json)',
    );
  });

  it("names a tensor the shard index does not list, and a folder without weights", async () => {
    const folder = await tiny(TINY_LLAMA, { shards: 2 });
    await writeFile(path.join(folder.dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: {} }));
    await expect(loadModel(folder.store)).rejects.toThrow('model.safetensors.index.json: weight_map has no file for tensor "model.embed_tokens.weight"');
    await rm(path.join(folder.dir, "model.safetensors.index.json"));
    await expect(loadModel(folder.store)).rejects.toThrow(/: no model\.safetensors or model\.safetensors\.index\.json in the model folder/);
  });

  it("names a missing config.json", async () => {
    const folder = await tiny(TINY_GPT2);
    await rm(path.join(folder.dir, "config.json"));
    await expect(loadModel(folder.store)).rejects.toThrow(/^config\.json: not found in file:\/\//);
  });
});
