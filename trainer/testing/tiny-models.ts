import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseModelConfig } from "../model/config.ts";
import { weightShapes } from "../model/loader.ts";
import { Rng } from "../random.ts";
import { readSafetensors, writeSafetensors, type FloatDtype, type TensorMap } from "../safetensors/safetensors.ts";
import { TestFolderStore } from "./folder-store.ts";

/** Tiny Llama with grouped-query attention (4 query heads, 2 key/value heads), untied head. */
export const TINY_LLAMA = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  vocab_size: 61,
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 128,
  tie_word_embeddings: false,
  hidden_act: "silu",
};

/** Tiny Qwen3: q/k norms and a head_dim (16) apart from hidden_size / heads. */
export const TINY_QWEN3 = {
  ...TINY_LLAMA,
  architectures: ["Qwen3ForCausalLM"],
  model_type: "qwen3",
  head_dim: 16,
  tie_word_embeddings: true,
  use_sliding_window: false,
};

/**
 * Tiny Gemma 3 text, in the config.json fields Gemma 3 checkpoints were published with: three
 * layers, the middle one full and the others sliding over 4 positions with their own rotary base,
 * and an attention scalar that is not head_dim.
 */
export const TINY_GEMMA3 = {
  architectures: ["Gemma3ForCausalLM"],
  model_type: "gemma3_text",
  vocab_size: 61,
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 3,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  hidden_activation: "gelu_pytorch_tanh",
  rms_norm_eps: 1e-6,
  query_pre_attn_scalar: 24,
  sliding_window: 4,
  layer_types: ["sliding_attention", "full_attention", "sliding_attention"],
  rope_theta: 1_000_000,
  rope_local_base_freq: 10000,
  rope_scaling: { rope_type: "linear", factor: 8 },
  max_position_embeddings: 128,
  tie_word_embeddings: true,
};

/** Tiny Phi-3: fused qkv_proj and gate_up_proj, rotary on half of each head, a 5-position window. */
export const TINY_PHI3 = {
  ...TINY_LLAMA,
  architectures: ["Phi3ForCausalLM"],
  model_type: "phi3",
  partial_rotary_factor: 0.5,
  sliding_window: 5,
};

/**
 * Tiny GPT-2 (3 heads of 8), without dropout: tests that compare training-mode passes with a
 * reference or with each other need them deterministic (GPT2Config's default is 0.1 each).
 */
export const TINY_GPT2 = {
  architectures: ["GPT2LMHeadModel"],
  model_type: "gpt2",
  vocab_size: 53,
  n_embd: 24,
  n_layer: 2,
  n_head: 3,
  n_positions: 32,
  n_inner: null,
  layer_norm_epsilon: 1e-5,
  activation_function: "gelu_new",
  attn_pdrop: 0,
  resid_pdrop: 0,
  embd_pdrop: 0,
};

export interface TinyModel {
  /** The folder holding config.json and the safetensors file(s). */
  dir: string;
  store: TestFolderStore;
  config: Record<string, unknown>;
  /** The weights exactly as stored (after rounding to the file's dtype), by name in the file. */
  weights: TensorMap;
}

export interface TinyModelOptions {
  seed?: number;
  /** Storage dtype of each shard, cycled; default F32. */
  dtypes?: FloatDtype[];
  /** Split the weights into this many shards with model.safetensors.index.json; default 1 (model.safetensors). */
  shards?: number;
  /** Store GPT-2 weights without the "transformer." prefix, as the original gpt2 checkpoint does. */
  stripTransformerPrefix?: boolean;
}

/** Writes a real model folder with random weights to a fresh temporary folder. */
export async function writeTinyModel(config: Record<string, unknown>, options: TinyModelOptions = {}): Promise<TinyModel> {
  const dir = await mkdtemp(path.join(tmpdir(), "kubetune-tiny-model-"));
  const rng = Rng.fromSeed(options.seed ?? 1);
  const shapes = weightShapes(parseModelConfig(config));
  const named = [...shapes].map(([name, shape]) => [options.stripTransformerPrefix ? name.replace(/^transformer\./, "") : name, shape] as const);
  const random: TensorMap = new Map(named.map(([name, shape]) => [name, { shape: [...shape], data: randomWeight(name, shape, rng) }]));

  await writeFile(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
  const shardCount = options.shards ?? 1;
  const dtypes = options.dtypes ?? ["F32"];
  const weights: TensorMap = new Map();
  const weightMap: Record<string, string> = {};
  const names = [...random.keys()];
  const perShard = Math.ceil(names.length / shardCount);
  for (let shard = 0; shard < shardCount; shard++) {
    const file = shardCount === 1 ? "model.safetensors" : `model-${pad(shard + 1)}-of-${pad(shardCount)}.safetensors`;
    const part: TensorMap = new Map(names.slice(shard * perShard, (shard + 1) * perShard).map((name) => [name, random.get(name)!]));
    const bytes = writeSafetensors(part, { dtype: dtypes[shard % dtypes.length]! });
    await writeFile(path.join(dir, file), bytes);
    for (const [name, tensor] of readSafetensors(bytes, file).tensors) {
      weights.set(name, tensor);
      weightMap[name] = file;
    }
  }
  if (shardCount > 1) {
    await writeFile(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
  }
  return { dir, store: new TestFolderStore(dir), config, weights };
}

function pad(n: number): string {
  return String(n).padStart(5, "0");
}

/** Values that keep activations of order one: norms near 1, small biases, weights of variance 1/in. */
function randomWeight(name: string, shape: readonly number[], rng: Rng): Float32Array {
  const size = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(size);
  const isNorm = /(norm|ln_\d|ln_f)\.weight$/.test(name);
  const isBias = name.endsWith(".bias");
  const isConv1d = /\.(c_attn|c_proj|c_fc)\.weight$/.test(name);
  const fanIn = isConv1d ? shape[0]! : (shape[1] ?? 1);
  for (let i = 0; i < size; i++) {
    if (isNorm) out[i] = 1 + rng.uniform(-0.2, 0.2);
    else if (isBias) out[i] = rng.uniform(-0.1, 0.1);
    else out[i] = rng.uniform(-1, 1) * Math.sqrt(3 / fanIn);
  }
  return out;
}
