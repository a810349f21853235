// The trainer benchmark's configurations, as plain data, and the arithmetic on them (token ids,
// FLOPs per step) that bench/main.ts, bench/trainer-bench.ts and bench/reference_lora.py share.
import { parseModelConfig, type LlamaConfig } from "../trainer/model/config.ts";
import { weightShapes } from "../trainer/model/loader.ts";
import type { FloatDtype } from "../trainer/safetensors/safetensors.ts";

export interface BenchConfig {
  name: ConfigName;
  /** One line for people: the model and the step. */
  description: string;
  /** The config.json of the model folder the bench writes (random weights). */
  modelConfig: Record<string, unknown>;
  /** How model.safetensors stores the weights (the loaders decode to float32). */
  dtype: FloatDtype;
  /** Weights are uniform in [-weightRange, weightRange); norm scales are 1. */
  weightRange: number;
  batchSize: number;
  seqLength: number;
  lora: { r: number; alpha: number; targetModules: string[] };
  /** Activation recomputation (gradient checkpointing) per layer, in tfjs and in PyTorch alike. */
  recompute: boolean;
  /** Untimed steps first, then `repeats` timed runs of `steps` steps each; the median run counts. */
  protocol: { warmup: number; steps: number; repeats: number };
  seed: number;
}

export type ConfigName = "small" | "0.5b";

const LORA = { r: 8, alpha: 16, targetModules: ["q_proj", "v_proj"] };

export const BENCH_CONFIGS: Record<ConfigName, BenchConfig> = {
  small: {
    name: "small",
    description: "4-layer Llama, hidden 256, 4 heads, vocab 4096; batch 8 x 128 tokens; LoRA r 8 on q_proj, v_proj",
    modelConfig: {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      vocab_size: 4096,
      hidden_size: 256,
      // 8/3 of hidden, rounded up to a multiple of 16, as Llama sizes its MLP.
      intermediate_size: 688,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      hidden_act: "silu",
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      max_position_embeddings: 128,
      tie_word_embeddings: false,
      torch_dtype: "float32",
    },
    dtype: "F32",
    weightRange: 0.05,
    batchSize: 8,
    seqLength: 128,
    lora: LORA,
    recompute: false,
    protocol: { warmup: 2, steps: 5, repeats: 3 },
    seed: 0,
  },
  "0.5b": {
    name: "0.5b",
    description: "Qwen2.5-0.5B shapes (24 layers, hidden 896, 14 heads / 2 KV heads, vocab 151,936, tied embeddings, qkv bias); batch 1 x 512 tokens; LoRA r 8 on q_proj, v_proj",
    // Qwen2.5-0.5B's own config.json, less the token ids and generation settings.
    modelConfig: {
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      vocab_size: 151936,
      hidden_size: 896,
      intermediate_size: 4864,
      num_hidden_layers: 24,
      num_attention_heads: 14,
      num_key_value_heads: 2,
      hidden_act: "silu",
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      max_position_embeddings: 32768,
      sliding_window: 32768,
      use_sliding_window: false,
      max_window_layers: 24,
      tie_word_embeddings: true,
      torch_dtype: "bfloat16",
    },
    // As the released model is stored; the loaders widen it to float32, as they do for users.
    dtype: "BF16",
    // About the standard deviation of Qwen's initializer_range (0.02).
    weightRange: 0.035,
    batchSize: 1,
    seqLength: 512,
    lora: LORA,
    // The memory target is stated with recomputation: under 6 GB at batch 1 x 512.
    recompute: true,
    // One step takes tens of seconds here; a few keep the whole bench near 20 minutes.
    protocol: { warmup: 1, steps: 1, repeats: 3 },
    seed: 0,
  },
};

export const CONFIG_NAMES = Object.keys(BENCH_CONFIGS) as ConfigName[];

export function isConfigName(name: string): name is ConfigName {
  return Object.hasOwn(BENCH_CONFIGS, name);
}

export function llamaConfigOf(config: BenchConfig): LlamaConfig {
  const parsed = parseModelConfig(config.modelConfig);
  if (parsed.family !== "llama") throw new Error(`bench config ${config.name}: expected a Llama-family model`);
  return parsed;
}

/**
 * The token ids of the benchmark batch, row-major [batch, seq]: a 31-bit linear congruential
 * sequence (glibc's constants) taken modulo the vocabulary, so that bench/reference_lora.py can
 * make exactly the same ids without sharing a generator.
 */
export function benchTokenIds(count: number, vocabSize: number): Int32Array {
  const ids = new Int32Array(count);
  let state = 0;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(1103515245, state) + 12345) & 0x7fffffff;
    ids[i] = state % vocabSize;
  }
  return ids;
}

/** How stepFlops counts, for the report. */
export const STEP_FLOPS_FORMULA =
  "4 * frozenMatmulParams * tokens + 6 * loraParams * tokens + 12 * layers * batch * seq^2 * heads * headDim, where frozenMatmulParams " +
  "counts every frozen weight matrix a token is multiplied by (all linear layers and the output head, the tied embedding included; " +
  "not the embedding lookup): 2 FLOPs per weight per token forward and 2 for the input gradient backward (no weight gradient, the weights " +
  "are frozen); LoRA matrices 2 forward, 2 input gradient, 2 weight gradient; attention QK^T and PV 4 T^2 forward and 8 backward per " +
  "head dimension, counted over the full T x T square as both implementations compute it; norms, activations, softmax and AdamW not counted";

export interface StepFlops {
  frozenMatmulParams: number;
  loraParams: number;
  tokens: number;
  total: number;
}

/** The FLOPs of one LoRA training step of `config`, by STEP_FLOPS_FORMULA. */
export function stepFlops(config: BenchConfig): StepFlops {
  const model = llamaConfigOf(config);
  let frozenMatmulParams = 0;
  for (const [name, shape] of weightShapes(model)) {
    if (shape.length === 2 && name !== "model.embed_tokens.weight") frozenMatmulParams += shape[0]! * shape[1]!;
  }
  if (model.tieWordEmbeddings) frozenMatmulParams += model.vocabSize * model.hiddenSize;
  const projectionSizes: Record<string, [number, number]> = {
    q_proj: [model.hiddenSize, model.numHeads * model.headDim],
    k_proj: [model.hiddenSize, model.numKeyValueHeads * model.headDim],
    v_proj: [model.hiddenSize, model.numKeyValueHeads * model.headDim],
    o_proj: [model.numHeads * model.headDim, model.hiddenSize],
  };
  const loraParams =
    model.numLayers *
    config.lora.targetModules.reduce((sum, target) => {
      const size = projectionSizes[target];
      if (!size) throw new Error(`bench config ${config.name}: no FLOP count for LoRA target ${target}`);
      return sum + config.lora.r * (size[0] + size[1]);
    }, 0);
  const tokens = config.batchSize * config.seqLength;
  const attention = 12 * model.numLayers * config.batchSize * config.seqLength ** 2 * model.numHeads * model.headDim;
  return { frozenMatmulParams, loraParams, tokens, total: 4 * frozenMatmulParams * tokens + 6 * loraParams * tokens + attention };
}
