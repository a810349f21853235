import { describe, expect, it } from "vitest";
import { TINY_GPT2, TINY_LLAMA } from "../testing/tiny-models.ts";
import { validate } from "../../api/index.ts";
import { MODEL_TYPES, SUPPORTED_ARCHITECTURES, parseModelConfig, type Gpt2Config, type LlamaConfig } from "./config.ts";

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
      rotaryDim: 8,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      ropeScaling: undefined,
      slidingRopeTheta: undefined,
      maxPositionEmbeddings: 128,
      qkvBias: false,
      outputProjectionBias: false,
      mlpBias: false,
      tieWordEmbeddings: false,
      layerTypes: ["full", "full"],
      slidingWindow: undefined,
      qkNorm: false,
      fusedProjections: false,
      activation: "silu",
      normWeightOffset: 0,
      embeddingScale: 1,
      sandwichNorms: false,
      attentionScale: 1 / Math.sqrt(8),
      attentionDropout: 0,
      residualDropout: 0,
      embeddingDropout: 0,
    } satisfies LlamaConfig);
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
      'config.json: field "rope_scaling.type" is "yarn"; supported rotary scaling types: default, linear, llama3, longrope',
    );
    expect(() => llama({ rope_scaling: { rope_type: "llama3", factor: 8 } })).toThrow('config.json: missing field "rope_scaling.low_freq_factor"');
  });

  it("enables Mistral's sliding window and Qwen2's only with use_sliding_window", () => {
    expect(llama({ architectures: ["MistralForCausalLM"], sliding_window: 4096 })).toMatchObject({ slidingWindow: 4096, layerTypes: ["sliding", "sliding"] });
    expect(llama({ architectures: ["Qwen2ForCausalLM"], sliding_window: 4096 })).toMatchObject({ slidingWindow: undefined, layerTypes: ["full", "full"] });
    const qwen = { architectures: ["Qwen2ForCausalLM"], sliding_window: 16, use_sliding_window: true };
    expect(llama({ ...qwen, max_window_layers: 1 })).toMatchObject({ slidingWindow: 16, layerTypes: ["full", "sliding"] });
    expect(llama({ ...qwen, layer_types: ["sliding_attention", "full_attention"] }).layerTypes).toEqual(["sliding", "full"]);
    expect(() => llama({ ...qwen, layer_types: ["sliding_attention"] })).toThrow('config.json: field "layer_types" must list one entry per layer (2)');
    // Llama has no sliding window, whatever the file says.
    expect(llama({ sliding_window: 4 }).slidingWindow).toBeUndefined();
  });

  it("reads Qwen3's q/k norms and explicit head_dim", () => {
    expect(llama({ architectures: ["Qwen3ForCausalLM"], head_dim: 16, attention_bias: true })).toMatchObject({
      headDim: 16,
      qkNorm: true,
      qkvBias: true,
      outputProjectionBias: true,
      mlpBias: false,
      attentionScale: 0.25,
    });
  });

  it("reads Gemma 3 text: its norms, embedding scale, attention scalar, layer pattern and two rotary bases", () => {
    const gemma = llama({
      architectures: ["Gemma3ForCausalLM"],
      hidden_act: undefined,
      hidden_activation: "gelu_pytorch_tanh",
      num_hidden_layers: 6,
      head_dim: 16,
      query_pre_attn_scalar: 64,
      sliding_window: 512,
      rope_theta: 1e6,
      rope_local_base_freq: 10000,
      rope_scaling: { rope_type: "linear", factor: 8 },
      tie_word_embeddings: undefined,
    });
    expect(gemma).toMatchObject({
      activation: "gelu_tanh",
      normWeightOffset: 1,
      sandwichNorms: true,
      qkNorm: true,
      embeddingScale: Math.sqrt(32),
      attentionScale: 1 / 8,
      tieWordEmbeddings: true,
      slidingWindow: 512,
      layerTypes: ["sliding", "sliding", "sliding", "sliding", "sliding", "full"],
      ropeTheta: 1e6,
      ropeScaling: { type: "linear", factor: 8 },
      slidingRopeTheta: 10000,
    });
    // Transformers 5's per-layer-type rope_parameters.
    const v5 = llama({
      architectures: ["Gemma3ForCausalLM"],
      rope_parameters: { full_attention: { rope_type: "default", rope_theta: 500000 }, sliding_attention: { rope_type: "default", rope_theta: 5000 } },
    });
    expect([v5.ropeTheta, v5.ropeScaling, v5.slidingRopeTheta]).toEqual([500000, undefined, 5000]);
  });

  it("refuses Gemma 3 options it does not compute, naming the field", () => {
    const gemma = { architectures: ["Gemma3ForCausalLM"], hidden_act: undefined };
    expect(() => llama({ ...gemma, final_logit_softcapping: 30 })).toThrow('config.json: field "final_logit_softcapping" is 30; logit soft-capping is not implemented here');
    expect(() => llama({ ...gemma, attn_logit_softcapping: 50 })).toThrow('config.json: field "attn_logit_softcapping" is 50');
    expect(() => llama({ ...gemma, use_bidirectional_attention: true })).toThrow('config.json: field "use_bidirectional_attention" is true');
  });

  it("reads Phi-3's fused projections, partial rotary factor, dropout and LongRoPE", () => {
    const phi3 = { architectures: ["Phi3ForCausalLM"], resid_pdrop: 0.1, embd_pdrop: 0.05, attention_dropout: 0.02 };
    expect(llama({ ...phi3, rope_parameters: { rope_type: "default", rope_theta: 10000, partial_rotary_factor: 0.75 } })).toMatchObject({
      fusedProjections: true,
      rotaryDim: 6,
      qkvBias: false,
      residualDropout: 0.1,
      embeddingDropout: 0.05,
      attentionDropout: 0.02,
    });
    // LongRoPE as Phi-3.5 writes it: original_max_position_embeddings at the top level, "su" in older files.
    const longrope = llama({
      ...phi3,
      max_position_embeddings: 131072,
      original_max_position_embeddings: 4096,
      rope_scaling: { type: "su", short_factor: [1, 1.5, 2, 3], long_factor: [2, 3, 4, 5] },
    });
    expect(longrope.ropeScaling).toEqual({
      type: "longrope",
      shortFactor: [1, 1.5, 2, 3],
      longFactor: [2, 3, 4, 5],
      originalMaxPositionEmbeddings: 4096,
      attentionFactor: Math.sqrt(1 + Math.log(32) / Math.log(4096)),
    });
    expect(() => llama({ ...phi3, rope_scaling: { type: "longrope", short_factor: [1], long_factor: [1, 2, 3, 4] } })).toThrow(
      'config.json: rotary scaling field "short_factor" has 1 values; the 8 rotated dimensions of a head need 4',
    );
    expect(() => llama({ partial_rotary_factor: 0.5 })).toThrow('config.json: field "partial_rotary_factor" is 0.5; only Phi3ForCausalLM rotates part of each head here');
    expect(() => llama({ ...phi3, resid_pdrop: 1 })).toThrow('config.json: field "resid_pdrop" must be a probability in [0, 1), got 1');
  });

  it("names a missing or mistyped field", () => {
    const { hidden_size: _, ...withoutHidden } = TINY_LLAMA;
    expect(() => parseModelConfig(withoutHidden)).toThrow('config.json: missing field "hidden_size" (a positive integer)');
    expect(() => llama({ num_hidden_layers: "2" })).toThrow('config.json: field "num_hidden_layers" must be a positive integer, got "2"');
    expect(() => llama({ num_key_value_heads: 3 })).toThrow('config.json: field "num_key_value_heads" (3) must divide "num_attention_heads" (4)');
    expect(() => llama({ hidden_act: "gelu" })).toThrow('config.json: field "hidden_act" is "gelu"; supported here: silu, gelu_pytorch_tanh, gelu_new');
    expect(() => parseModelConfig([], { file: "models/x/config.json" })).toThrow("models/x/config.json: must be a JSON object");
  });
});

describe("parseModelConfig: architecture", () => {
  it("names an unknown architecture and lists the supported ones", () => {
    expect(() => llama({ architectures: ["FalconForCausalLM"] })).toThrow(
      'config.json: unsupported architecture "FalconForCausalLM"; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, GPT2LMHeadModel.',
    );
  });

  it("lets an override by class name or model_type replace architectures", () => {
    const config = { ...TINY_LLAMA, architectures: ["SmolLMForCausalLM"] };
    expect(parseModelConfig(config, { architectureOverride: "LlamaForCausalLM" }).architecture).toBe("LlamaForCausalLM");
    expect(parseModelConfig(config, { architectureOverride: "mistral" }).architecture).toBe("MistralForCausalLM");
    expect(() => parseModelConfig(config, { architectureOverride: "falcon" })).toThrow('config.json: architecture override "falcon" is not supported');
  });

  it("offers in the FineTuneJob API every model type it accepts as an override", () => {
    const architectureProblems = (architecture: string) =>
      validate({ apiVersion: "kubetune.io/v1alpha1", kind: "FineTuneJob", metadata: { name: "x" }, spec: { baseModel: { uri: "model", architecture } } })
        .filter((problem) => problem.path === "spec.baseModel.architecture");
    for (const modelType of Object.keys(MODEL_TYPES)) {
      expect([modelType, architectureProblems(modelType)]).toEqual([modelType, []]);
      const config = SUPPORTED_ARCHITECTURES[MODEL_TYPES[modelType]!] === "gpt2" ? TINY_GPT2 : TINY_LLAMA;
      expect(parseModelConfig(config, { architectureOverride: modelType }).architecture).toBe(MODEL_TYPES[modelType]);
    }
    expect(architectureProblems("falcon")).toHaveLength(1);
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
      attentionDropout: 0,
      residualDropout: 0,
      embeddingDropout: 0,
    } satisfies Gpt2Config);
  });

  it("reads the dropout probabilities, 0.1 each when absent as in GPT2Config", () => {
    const { attn_pdrop: _a, resid_pdrop: _r, embd_pdrop: _e, ...withoutDropout } = TINY_GPT2;
    expect(parseModelConfig(withoutDropout)).toMatchObject({ attentionDropout: 0.1, residualDropout: 0.1, embeddingDropout: 0.1 });
    expect(parseModelConfig({ ...TINY_GPT2, attn_pdrop: 0.2 })).toMatchObject({ attentionDropout: 0.2, residualDropout: 0 });
    expect(() => parseModelConfig({ ...TINY_GPT2, embd_pdrop: -0.1 })).toThrow('config.json: field "embd_pdrop" must be a probability in [0, 1), got -0.1');
  });

  it("names a missing field and an unsupported activation", () => {
    const { n_embd: _, ...withoutWidth } = TINY_GPT2;
    expect(() => parseModelConfig(withoutWidth)).toThrow('config.json: missing field "n_embd"');
    expect(() => parseModelConfig({ ...TINY_GPT2, activation_function: "relu" })).toThrow(
      'config.json: field "activation_function" is "relu"; supported: gelu_new, gelu_pytorch_tanh, gelu',
    );
  });
});
