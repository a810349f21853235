import { describe, expect, it } from "vitest";
import { TINY_GPT2, TINY_LLAMA } from "../testing/tiny-models.ts";
import { parseModelConfig, type Gpt2Config, type LlamaConfig } from "./config.ts";

const llama = (overrides: Record<string, unknown> = {}) => parseModelConfig({ ...TINY_LLAMA, ...overrides }) as LlamaConfig;

describe("parseModelConfig: Llama family", () => {
  it("reads a Llama config.json with defaults for what it leaves out", () => {
    const { rope_theta: _theta, rms_norm_eps: _eps, ...minimal } = TINY_LLAMA;
    expect(parseModelConfig(minimal)).toEqual({
      family: "llama",
      architecture: "LlamaForCausalLM",
      vocabSize: 61,
      hiddenSize: 32,
      intermediateSize: 48,
      numLayers: 2,
      numHeads: 4,
      numKeyValueHeads: 2,
      headDim: 8,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      ropeScaling: undefined,
      maxPositionEmbeddings: 128,
      qkvBias: false,
      outputProjectionBias: false,
      mlpBias: false,
      tieWordEmbeddings: false,
      slidingWindow: undefined,
    });
  });

  it("gives Qwen2 bias on q, k and v but not o, whatever attention_bias says", () => {
    const qwen = llama({ architectures: ["Qwen2ForCausalLM"], attention_bias: false });
    expect([qwen.qkvBias, qwen.outputProjectionBias]).toEqual([true, false]);
    expect(llama({ attention_bias: true })).toMatchObject({ qkvBias: true, outputProjectionBias: true });
  });

  it("uses num_attention_heads for missing key/value heads and an explicit head_dim", () => {
    const { num_key_value_heads: _kv, ...withoutKv } = TINY_LLAMA;
    expect(parseModelConfig({ ...withoutKv, head_dim: 16 })).toMatchObject({ numKeyValueHeads: 4, headDim: 16 });
  });

  it("reads linear and llama3 rope scaling, under rope_scaling or Transformers 5's rope_parameters", () => {
    expect(llama({ rope_scaling: { type: "linear", factor: 4 } }).ropeScaling).toEqual({ type: "linear", factor: 4 });
    expect(llama({ rope_scaling: { rope_type: "default" } }).ropeScaling).toBeUndefined();
    const llama3 = llama({
      rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    expect(llama3.ropeScaling).toEqual({ type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    const v5 = llama({ rope_theta: undefined, rope_parameters: { rope_type: "linear", rope_theta: 500000, factor: 2 } });
    expect([v5.ropeTheta, v5.ropeScaling]).toEqual([500000, { type: "linear", factor: 2 }]);
  });

  it("rejects rope scaling types it does not implement, naming the field", () => {
    expect(() => llama({ rope_scaling: { type: "yarn", factor: 4 } })).toThrow(
      'config.json: field "rope_scaling.type" is "yarn"; supported rotary scaling types: default, linear, llama3',
    );
    expect(() => llama({ rope_scaling: { rope_type: "llama3", factor: 8 } })).toThrow('config.json: missing field "rope_scaling.low_freq_factor"');
  });

  it("enables Mistral's sliding window and Qwen2's only with use_sliding_window", () => {
    expect(llama({ architectures: ["MistralForCausalLM"], sliding_window: 4096 }).slidingWindow).toBe(4096);
    expect(llama({ architectures: ["Qwen2ForCausalLM"], sliding_window: 4096 }).slidingWindow).toBeUndefined();
  });

  it("names a missing or mistyped field", () => {
    const { hidden_size: _, ...withoutHidden } = TINY_LLAMA;
    expect(() => parseModelConfig(withoutHidden)).toThrow('config.json: missing field "hidden_size" (a positive integer)');
    expect(() => llama({ num_hidden_layers: "2" })).toThrow('config.json: field "num_hidden_layers" must be a positive integer, got "2"');
    expect(() => llama({ num_key_value_heads: 3 })).toThrow('config.json: field "num_key_value_heads" (3) must divide "num_attention_heads" (4)');
    expect(() => llama({ hidden_act: "gelu" })).toThrow('config.json: field "hidden_act" is "gelu"; the Llama family here supports "silu" only');
    expect(() => parseModelConfig([], { file: "models/x/config.json" })).toThrow("models/x/config.json: must be a JSON object");
  });
});

describe("parseModelConfig: architecture", () => {
  it("names an unknown architecture and lists the supported ones", () => {
    expect(() => llama({ architectures: ["FalconForCausalLM"] })).toThrow(
      'config.json: unsupported architecture "FalconForCausalLM"; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel.',
    );
  });

  it("lets an override by class name or model_type replace architectures", () => {
    const config = { ...TINY_LLAMA, architectures: ["SmolLMForCausalLM"] };
    expect(parseModelConfig(config, { architectureOverride: "LlamaForCausalLM" }).architecture).toBe("LlamaForCausalLM");
    expect(parseModelConfig(config, { architectureOverride: "mistral" }).architecture).toBe("MistralForCausalLM");
    expect(() => parseModelConfig(config, { architectureOverride: "falcon" })).toThrow('config.json: architecture override "falcon" is not supported');
  });

  it("falls back to model_type when architectures is absent", () => {
    const { architectures: _, ...withoutArchitectures } = TINY_GPT2;
    expect(parseModelConfig(withoutArchitectures).architecture).toBe("GPT2LMHeadModel");
  });
});

describe("parseModelConfig: GPT-2", () => {
  it("reads GPT-2's own field names", () => {
    expect(parseModelConfig(TINY_GPT2)).toEqual({
      family: "gpt2",
      architecture: "GPT2LMHeadModel",
      vocabSize: 53,
      hiddenSize: 24,
      innerSize: 96,
      numLayers: 2,
      numHeads: 3,
      maxPositions: 32,
      layerNormEps: 1e-5,
      activation: "gelu_new",
      scaleAttnWeights: true,
      scaleAttnByInverseLayerIdx: false,
      tieWordEmbeddings: true,
    } satisfies Gpt2Config);
  });

  it("names a missing field and an unsupported activation", () => {
    const { n_embd: _, ...withoutWidth } = TINY_GPT2;
    expect(() => parseModelConfig(withoutWidth)).toThrow('config.json: missing field "n_embd"');
    expect(() => parseModelConfig({ ...TINY_GPT2, activation_function: "relu" })).toThrow(
      'config.json: field "activation_function" is "relu"; supported: gelu_new, gelu_pytorch_tanh, gelu',
    );
  });
});
