/**
 * Model configuration read from a Hugging Face config.json, as plain data. Each supported
 * architecture maps to one of two families implemented in this folder: the Llama family
 * (llama.ts: Llama, Mistral, Qwen2, Qwen3, Gemma 3 text, Phi-3, whose differences are fields
 * here) and GPT-2 (gpt2.ts).
 */

/** Rotary-embedding frequency scaling, as config.json's `rope_scaling`. */
export type RopeScaling =
  | { type: "linear"; factor: number }
  | {
      type: "llama3";
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  | {
      /**
       * Phi-3's LongRoPE: each rotary frequency divided by its short_factor, or its long_factor
       * when a pass covers more than originalMaxPositionEmbeddings positions, and cos and sin
       * multiplied by attentionFactor.
       */
      type: "longrope";
      shortFactor: number[];
      longFactor: number[];
      originalMaxPositionEmbeddings: number;
      attentionFactor: number;
    };

/** How one layer attends: to every earlier position, or to the last `slidingWindow` ones only. */
export type AttentionKind = "full" | "sliding";

/**
 * The Llama family: RMSNorm, rotary embeddings, a gated MLP, grouped-query attention. Llama,
 * Mistral, Qwen2, Qwen3 (q/k norms), Gemma 3 text (scaled embeddings, (1 + w) norms, norms
 * around both sublayers, sliding layers with their own rotary base) and Phi-3 (fused qkv_proj
 * and gate_up_proj, partial rotary) differ only in the fields below.
 */
export interface LlamaConfig {
  family: "llama";
  /** The Hugging Face class name, e.g. "Qwen2ForCausalLM". */
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  /** Leading dimensions of each head that rotary embeddings turn (Phi-3's partial_rotary_factor); headDim for most. */
  rotaryDim: number;
  rmsNormEps: number;
  /** Rotary base and scaling of full-attention layers (of every layer, but for Gemma 3). */
  ropeTheta: number;
  ropeScaling: RopeScaling | undefined;
  /** Gemma 3: the rotary base of sliding layers, which have no rotary scaling; undefined: as full layers. */
  slidingRopeTheta: number | undefined;
  maxPositionEmbeddings: number;
  /** Bias on q_proj, k_proj and v_proj (Llama's attention_bias; always on in Qwen2). */
  qkvBias: boolean;
  /** Bias on o_proj (Llama's attention_bias; never in Qwen2). */
  outputProjectionBias: boolean;
  /** Bias on gate_proj, up_proj and down_proj (Llama's mlp_bias). */
  mlpBias: boolean;
  tieWordEmbeddings: boolean;
  /** Per layer, how it attends (config.json's layer_types, or what the architecture derives). */
  layerTypes: AttentionKind[];
  /** The window of sliding layers; undefined when no layer slides. */
  slidingWindow: number | undefined;
  /** RMSNorm over each head of q and k before rotary embeddings (Qwen3, Gemma 3). */
  qkNorm: boolean;
  /** Phi-3: q, k, v as one qkv_proj and gate, up as one gate_up_proj. */
  fusedProjections: boolean;
  /** The gate's activation: SiLU, or GELU's tanh approximation (Gemma). */
  activation: "silu" | "gelu_tanh";
  /** Gemma's RMSNorm multiplies by (1 + weight): 1; others by weight: 0. */
  normWeightOffset: 0 | 1;
  /** Factor on token embeddings (Gemma: sqrt(hidden_size)); 1 for most. */
  embeddingScale: number;
  /** Gemma 3: a norm after attention and around the MLP (pre_ and post_feedforward_layernorm). */
  sandwichNorms: boolean;
  /** Factor on q·k: 1/sqrt(head_dim), or Gemma's query_pre_attn_scalar ** -0.5. */
  attentionScale: number;
  /** Dropout in training on attention probabilities (attention_dropout). */
  attentionDropout: number;
  /** Dropout in training on each sublayer's output before the residual add (Phi-3's resid_pdrop). */
  residualDropout: number;
  /** Dropout in training on the input embeddings (Phi-3's embd_pdrop). */
  embeddingDropout: number;
}

/** GPT-2: learned positions, LayerNorm, GELU, Conv1D projections. */
export interface Gpt2Config {
  family: "gpt2";
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  innerSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  layerNormEps: number;
  activation: "gelu_new" | "gelu";
  /** Divide attention scores by sqrt(head_dim) (GPT-2's scale_attn_weights). */
  scaleAttnWeights: boolean;
  /** Also divide layer i's scores by i + 1 (scale_attn_by_inverse_layer_idx). */
  scaleAttnByInverseLayerIdx: boolean;
  tieWordEmbeddings: boolean;
  /** Dropout in training on attention probabilities (attn_pdrop). */
  attentionDropout: number;
  /** Dropout in training on attn.c_proj's and mlp.c_proj's outputs (resid_pdrop). */
  residualDropout: number;
  /** Dropout in training on wte + wpe (embd_pdrop). */
  embeddingDropout: number;
}

export type ModelConfig = LlamaConfig | Gpt2Config;

/** Hugging Face architecture class names this trainer implements, with their family. */
export const SUPPORTED_ARCHITECTURES = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "llama",
  Qwen2ForCausalLM: "llama",
  Qwen3ForCausalLM: "llama",
  Gemma3ForCausalLM: "llama",
  Phi3ForCausalLM: "llama",
  GPT2LMHeadModel: "gpt2",
} as const;

export type Architecture = keyof typeof SUPPORTED_ARCHITECTURES;

/** Short names (config.json's model_type) accepted as an architecture override (the API's baseModel.architecture). */
export const MODEL_TYPES: Readonly<Record<string, Architecture>> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
  gemma3_text: "Gemma3ForCausalLM",
  phi3: "Phi3ForCausalLM",
  gpt2: "GPT2LMHeadModel",
};

/** A config.json that cannot be used, with the file and field to fix. */
export class ModelConfigError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "ModelConfigError";
  }
}

/**
 * Reads a parsed config.json. `architectureOverride` (the FineTuneJob's
 * `baseModel.architecture`) replaces config.json's `architectures[0]`; it may be a class name
 * such as "LlamaForCausalLM" or a model_type such as "llama".
 */
export function parseModelConfig(json: unknown, options: { file?: string; architectureOverride?: string } = {}): ModelConfig {
  const file = options.file ?? "config.json";
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelConfigError(file, "must be a JSON object");
  }
  const fields = new Fields(json as Record<string, unknown>, file);
  const architecture = resolveArchitecture(fields, options.architectureOverride);
  return SUPPORTED_ARCHITECTURES[architecture] === "gpt2"
    ? parseGpt2(fields, architecture)
    : parseLlama(fields, architecture);
}

function resolveArchitecture(fields: Fields, override: string | undefined): Architecture {
  const supported = Object.keys(SUPPORTED_ARCHITECTURES).join(", ");
  if (override !== undefined) {
    const resolved = isArchitecture(override) ? override : MODEL_TYPES[override];
    if (!resolved) {
      throw new ModelConfigError(
        fields.file,
        `architecture override "${override}" is not supported; supported: ${supported} (or ${Object.keys(MODEL_TYPES).join(", ")})`,
      );
    }
    return resolved;
  }
  const architectures = fields.raw.architectures;
  const declared = Array.isArray(architectures) && typeof architectures[0] === "string" ? architectures[0] : undefined;
  if (declared !== undefined) {
    if (isArchitecture(declared)) return declared;
    throw new ModelConfigError(
      fields.file,
      `unsupported architecture "${declared}"; supported: ${supported}. ` +
        "If the model is one of these under another name, set baseModel.architecture.",
    );
  }
  const modelType = fields.raw.model_type;
  if (typeof modelType === "string" && MODEL_TYPES[modelType]) return MODEL_TYPES[modelType];
  throw new ModelConfigError(
    fields.file,
    `missing field "architectures" (and model_type ${JSON.stringify(modelType)} is not one of ${Object.keys(MODEL_TYPES).join(", ")}); ` +
      `supported architectures: ${supported}`,
  );
}

function isArchitecture(name: string): name is Architecture {
  return Object.hasOwn(SUPPORTED_ARCHITECTURES, name);
}

function parseLlama(fields: Fields, architecture: Architecture): LlamaConfig {
  const isQwen2 = architecture === "Qwen2ForCausalLM";
  const isQwen3 = architecture === "Qwen3ForCausalLM";
  const isMistral = architecture === "MistralForCausalLM";
  const isGemma3 = architecture === "Gemma3ForCausalLM";
  const isPhi3 = architecture === "Phi3ForCausalLM";
  const hiddenSize = fields.positiveInteger("hidden_size");
  const numHeads = fields.positiveInteger("num_attention_heads");
  const numKeyValueHeads = fields.positiveInteger("num_key_value_heads", numHeads);
  const numLayers = fields.positiveInteger("num_hidden_layers");
  if (numHeads % numKeyValueHeads !== 0) {
    throw new ModelConfigError(
      fields.file,
      `field "num_key_value_heads" (${numKeyValueHeads}) must divide "num_attention_heads" (${numHeads})`,
    );
  }
  if (fields.raw.head_dim == null && hiddenSize % numHeads !== 0) {
    throw new ModelConfigError(fields.file, `field "hidden_size" (${hiddenSize}) must be a multiple of "num_attention_heads" (${numHeads}), or set "head_dim"`);
  }
  // Phi-3 always derives head_dim; Gemma 3's default is 256.
  const headDim = isPhi3 ? hiddenSize / numHeads : fields.positiveInteger("head_dim", isGemma3 ? 256 : hiddenSize / numHeads);
  const activation = parseGatedActivation(fields, isGemma3);
  if (isGemma3) refuseGemma3Options(fields);
  // Qwen2 always has q, k, v biases; Mistral and Phi-3 never have biases; the others as attention_bias says.
  const attentionBias = !isQwen2 && !isMistral && !isPhi3 && fields.boolean("attention_bias", false);
  // Transformers 5 moved rope_theta and the scaling into one rope_parameters object (per layer type for Gemma 3).
  const rope = parseRope(fields, isGemma3);
  const maxPositionEmbeddings = fields.positiveInteger("max_position_embeddings", isGemma3 ? 131072 : 2048);
  const partialRotaryFactor = rope.parameters?.raw.partial_rotary_factor != null
    ? rope.parameters.positiveNumber("partial_rotary_factor")
    : fields.positiveNumber("partial_rotary_factor", 1);
  if (!isPhi3 && partialRotaryFactor !== 1) {
    throw new ModelConfigError(fields.file, `field "partial_rotary_factor" is ${partialRotaryFactor}; only Phi3ForCausalLM rotates part of each head here`);
  }
  const rotaryDim = Math.floor(headDim * Math.min(1, partialRotaryFactor));
  if (headDim % 2 !== 0 || rotaryDim % 2 !== 0 || rotaryDim === 0) {
    throw new ModelConfigError(fields.file, `rotary embeddings need an even, non-zero number of rotated dimensions per head; head_dim ${headDim} with partial_rotary_factor ${partialRotaryFactor} gives ${rotaryDim}`);
  }
  const { layerTypes, slidingWindow } = parseLayerTypes(fields, architecture, numLayers);
  const ropeScaling = parseRopeScaling(rope.parameters ?? fields.optionalObject("rope_scaling"), maxPositionEmbeddings, fields);
  if (ropeScaling?.type === "longrope") {
    for (const [name, factors] of [["short_factor", ropeScaling.shortFactor], ["long_factor", ropeScaling.longFactor]] as const) {
      if (factors.length !== rotaryDim / 2) {
        throw new ModelConfigError(fields.file, `rotary scaling field "${name}" has ${factors.length} values; the ${rotaryDim} rotated dimensions of a head need ${rotaryDim / 2}`);
      }
    }
  }
  return {
    family: "llama",
    architecture,
    vocabSize: fields.positiveInteger("vocab_size"),
    hiddenSize,
    intermediateSize: fields.positiveInteger("intermediate_size"),
    numLayers,
    numHeads,
    numKeyValueHeads,
    headDim,
    rotaryDim,
    rmsNormEps: fields.positiveNumber("rms_norm_eps", 1e-6),
    ropeTheta: rope.theta,
    ropeScaling,
    slidingRopeTheta: rope.slidingTheta,
    maxPositionEmbeddings,
    qkvBias: isQwen2 || attentionBias,
    outputProjectionBias: attentionBias,
    mlpBias: !isQwen2 && !isQwen3 && !isMistral && !isGemma3 && !isPhi3 && fields.boolean("mlp_bias", false),
    tieWordEmbeddings: fields.boolean("tie_word_embeddings", isGemma3),
    layerTypes,
    slidingWindow,
    qkNorm: isQwen3 || isGemma3,
    fusedProjections: isPhi3,
    activation,
    normWeightOffset: isGemma3 ? 1 : 0,
    embeddingScale: isGemma3 ? Math.sqrt(hiddenSize) : 1,
    sandwichNorms: isGemma3,
    attentionScale: isGemma3 ? fields.positiveNumber("query_pre_attn_scalar", 256) ** -0.5 : 1 / Math.sqrt(headDim),
    attentionDropout: fields.probability("attention_dropout", 0),
    residualDropout: isPhi3 ? fields.probability("resid_pdrop", 0) : 0,
    embeddingDropout: isPhi3 ? fields.probability("embd_pdrop", 0) : 0,
  };
}

function parseGatedActivation(fields: Fields, isGemma3: boolean): LlamaConfig["activation"] {
  // Gemma names it hidden_activation; older Gemma files also carry hidden_act.
  const name = isGemma3 && fields.raw.hidden_activation != null ? "hidden_activation" : "hidden_act";
  const value = fields.string(name, isGemma3 ? "gelu_pytorch_tanh" : "silu");
  const activations: Record<string, LlamaConfig["activation"]> = { silu: "silu", gelu_pytorch_tanh: "gelu_tanh", gelu_new: "gelu_tanh" };
  const activation = activations[value];
  if (!activation) throw new ModelConfigError(fields.file, `field "${name}" is "${value}"; supported here: ${Object.keys(activations).join(", ")}`);
  return activation;
}

/** Gemma 3 options this trainer does not compute; refused so that nothing is silently wrong. */
function refuseGemma3Options(fields: Fields): void {
  for (const name of ["attn_logit_softcapping", "final_logit_softcapping"]) {
    if (fields.raw[name] != null) {
      throw new ModelConfigError(fields.file, `field "${name}" is ${JSON.stringify(fields.raw[name])}; logit soft-capping is not implemented here (Gemma 3 checkpoints set it to null)`);
    }
  }
  if (fields.boolean("use_bidirectional_attention", false)) {
    throw new ModelConfigError(fields.file, `field "use_bidirectional_attention" is true; this trainer trains causal language models only`);
  }
}

/**
 * The rotary base of full layers with their scaling parameters, and Gemma 3's base of sliding
 * layers. Transformers 5 writes rope_parameters (per layer type for Gemma 3); older files write
 * rope_theta, rope_scaling and Gemma's rope_local_base_freq.
 */
function parseRope(fields: Fields, isGemma3: boolean): { theta: number; parameters: Fields | undefined; slidingTheta: number | undefined } {
  const ropeParameters = fields.optionalObject("rope_parameters");
  if (!isGemma3) {
    return { theta: ropeParameters?.positiveNumber("rope_theta", 10000) ?? fields.positiveNumber("rope_theta", 10000), parameters: ropeParameters, slidingTheta: undefined };
  }
  const full = ropeParameters?.optionalObject("full_attention");
  const sliding = ropeParameters?.optionalObject("sliding_attention");
  if (sliding && (sliding.raw.rope_type ?? "default") !== "default") {
    throw new ModelConfigError(fields.file, `field "${sliding.qualified("rope_type")}" is ${JSON.stringify(sliding.raw.rope_type)}; Gemma 3's sliding layers here use default rotary embeddings`);
  }
  return {
    theta: full?.positiveNumber("rope_theta", 1_000_000) ?? fields.positiveNumber("rope_theta", 1_000_000),
    parameters: full,
    slidingTheta: sliding?.positiveNumber("rope_theta", 10000) ?? fields.positiveNumber("rope_local_base_freq", 10000),
  };
}

/**
 * Which layers slide, as Transformers computes it: every layer for Mistral and Phi-3 when
 * sliding_window is set; for Qwen2, Qwen3 and Gemma 3 config.json's layer_types, or when absent
 * layers from max_window_layers on (Qwen, with use_sliding_window) and all but every
 * sliding_window_pattern-th layer (Gemma 3). Qwen ignores sliding_window without use_sliding_window.
 */
function parseLayerTypes(fields: Fields, architecture: Architecture, numLayers: number): { layerTypes: AttentionKind[]; slidingWindow: number | undefined } {
  const isQwen = architecture === "Qwen2ForCausalLM" || architecture === "Qwen3ForCausalLM";
  const windowApplies = architecture !== "LlamaForCausalLM" && (!isQwen || fields.boolean("use_sliding_window", false));
  const window = windowApplies ? fields.optionalPositiveInteger("sliding_window") : undefined;
  let declared: AttentionKind[];
  const raw = fields.raw.layer_types;
  const readsLayerTypes = isQwen || architecture === "Gemma3ForCausalLM";
  if (readsLayerTypes && raw != null) {
    if (!Array.isArray(raw) || raw.length !== numLayers) {
      throw new ModelConfigError(fields.file, `field "layer_types" must list one entry per layer (${numLayers}), got ${JSON.stringify(raw)}`);
    }
    declared = raw.map((type, i) => {
      if (type === "full_attention") return "full";
      if (type === "sliding_attention") return "sliding";
      throw new ModelConfigError(fields.file, `field "layer_types[${i}]" is ${JSON.stringify(type)}; supported: full_attention, sliding_attention`);
    });
  } else if (architecture === "Gemma3ForCausalLM") {
    const pattern = fields.positiveInteger("sliding_window_pattern", 6);
    declared = Array.from({ length: numLayers }, (_, i) => ((i + 1) % pattern === 0 ? "full" : "sliding"));
  } else if (isQwen) {
    const firstSliding = fields.positiveInteger("max_window_layers", 28);
    declared = Array.from({ length: numLayers }, (_, i) => (i >= firstSliding ? "sliding" : "full"));
  } else {
    declared = Array.from({ length: numLayers }, () => "sliding");
  }
  const layerTypes = declared.map((type) => (window === undefined ? "full" : type));
  return { layerTypes, slidingWindow: layerTypes.includes("sliding") ? window : undefined };
}

function parseRopeScaling(scaling: Fields | undefined, maxPositionEmbeddings: number, config: Fields): RopeScaling | undefined {
  if (!scaling) return undefined;
  // Older files call it "type", newer ones "rope_type".
  const type = scaling.raw.rope_type ?? scaling.raw.type;
  if (type === undefined || type === "default") return undefined;
  if (type === "linear") return { type: "linear", factor: scaling.positiveNumber("factor") };
  if (type === "llama3") {
    const lowFreqFactor = scaling.positiveNumber("low_freq_factor");
    const highFreqFactor = scaling.positiveNumber("high_freq_factor");
    if (highFreqFactor <= lowFreqFactor) {
      throw new ModelConfigError(
        scaling.file,
        `field "${scaling.qualified("high_freq_factor")}" (${highFreqFactor}) must be above "${scaling.qualified("low_freq_factor")}" (${lowFreqFactor})`,
      );
    }
    return {
      type: "llama3",
      factor: scaling.positiveNumber("factor"),
      lowFreqFactor,
      highFreqFactor,
      originalMaxPositionEmbeddings: scaling.positiveInteger("original_max_position_embeddings", maxPositionEmbeddings),
    };
  }
  // Phi-3's older files call LongRoPE "su".
  if (type === "longrope" || type === "su") {
    // Phi-3 keeps original_max_position_embeddings at the top level; Transformers 5 copies it in.
    const original = scaling.raw.original_max_position_embeddings != null
      ? scaling.positiveInteger("original_max_position_embeddings")
      : config.positiveInteger("original_max_position_embeddings", maxPositionEmbeddings);
    const factor = scaling.raw.factor != null ? scaling.positiveNumber("factor") : maxPositionEmbeddings / original;
    const attentionFactor = scaling.raw.attention_factor != null
      ? scaling.positiveNumber("attention_factor")
      : factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
    return {
      type: "longrope",
      shortFactor: scaling.positiveNumbers("short_factor"),
      longFactor: scaling.positiveNumbers("long_factor"),
      originalMaxPositionEmbeddings: original,
      attentionFactor,
    };
  }
  const field = scaling.qualified(scaling.raw.rope_type === undefined ? "type" : "rope_type");
  throw new ModelConfigError(
    scaling.file,
    `field "${field}" is ${JSON.stringify(type)}; supported rotary scaling types: default, linear, llama3, longrope`,
  );
}

function parseGpt2(fields: Fields, architecture: Architecture): Gpt2Config {
  const hiddenSize = fields.positiveInteger("n_embd");
  const numHeads = fields.positiveInteger("n_head");
  if (hiddenSize % numHeads !== 0) {
    throw new ModelConfigError(fields.file, `field "n_embd" (${hiddenSize}) must be a multiple of "n_head" (${numHeads})`);
  }
  const activation = fields.string("activation_function", "gelu_new");
  // gelu_pytorch_tanh is the same tanh approximation as gelu_new.
  const activations: Record<string, Gpt2Config["activation"]> = { gelu_new: "gelu_new", gelu_pytorch_tanh: "gelu_new", gelu: "gelu" };
  const resolved = activations[activation];
  if (!resolved) {
    throw new ModelConfigError(fields.file, `field "activation_function" is "${activation}"; supported: ${Object.keys(activations).join(", ")}`);
  }
  if (fields.boolean("reorder_and_upcast_attn", false)) {
    throw new ModelConfigError(fields.file, `field "reorder_and_upcast_attn" is true, which this trainer does not implement`);
  }
  return {
    family: "gpt2",
    architecture,
    vocabSize: fields.positiveInteger("vocab_size"),
    hiddenSize,
    innerSize: fields.positiveInteger("n_inner", 4 * hiddenSize),
    numLayers: fields.positiveInteger("n_layer"),
    numHeads,
    maxPositions: fields.positiveInteger("n_positions", 1024),
    layerNormEps: fields.positiveNumber("layer_norm_epsilon", 1e-5),
    activation: resolved,
    scaleAttnWeights: fields.boolean("scale_attn_weights", true),
    scaleAttnByInverseLayerIdx: fields.boolean("scale_attn_by_inverse_layer_idx", false),
    tieWordEmbeddings: fields.boolean("tie_word_embeddings", true),
    // GPT2Config's defaults: a config.json without them trains with 0.1 dropout in Transformers.
    attentionDropout: fields.probability("attn_pdrop", 0.1),
    residualDropout: fields.probability("resid_pdrop", 0.1),
    embeddingDropout: fields.probability("embd_pdrop", 0.1),
  };
}

/** Typed access to config.json fields; a missing required field or a wrong type names the field. */
class Fields {
  constructor(
    readonly raw: Record<string, unknown>,
    readonly file: string,
    private readonly prefix = "",
  ) {}

  /** The field's full dotted name, for messages. */
  qualified(name: string): string {
    return `${this.prefix}${name}`;
  }

  private get(name: string, fallback: unknown, kind: string): unknown {
    const value = this.raw[name];
    // Hugging Face writes null for "use the default".
    if (value === undefined || value === null) {
      if (fallback === undefined) throw new ModelConfigError(this.file, `missing field "${this.qualified(name)}" (${kind})`);
      return fallback;
    }
    return value;
  }

  private invalid(name: string, value: unknown, kind: string): ModelConfigError {
    return new ModelConfigError(this.file, `field "${this.qualified(name)}" must be ${kind}, got ${JSON.stringify(value)}`);
  }

  positiveInteger(name: string, fallback?: number): number {
    const value = this.get(name, fallback, "a positive integer");
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) throw this.invalid(name, value, "a positive integer");
    return value;
  }

  optionalPositiveInteger(name: string): number | undefined {
    return this.raw[name] == null ? undefined : this.positiveInteger(name);
  }

  positiveNumber(name: string, fallback?: number): number {
    const value = this.get(name, fallback, "a positive number");
    if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) throw this.invalid(name, value, "a positive number");
    return value;
  }

  /** A dropout probability in [0, 1). */
  probability(name: string, fallback: number): number {
    const value = this.get(name, fallback, "a probability in [0, 1)");
    if (typeof value !== "number" || !(value >= 0 && value < 1)) throw this.invalid(name, value, "a probability in [0, 1)");
    return value;
  }

  /** A non-empty list of positive numbers. */
  positiveNumbers(name: string): number[] {
    const value = this.get(name, undefined, "a list of positive numbers");
    if (!Array.isArray(value) || value.length === 0 || !value.every((item) => typeof item === "number" && Number.isFinite(item) && item > 0)) {
      throw this.invalid(name, value, "a non-empty list of positive numbers");
    }
    return value as number[];
  }

  boolean(name: string, fallback: boolean): boolean {
    const value = this.get(name, fallback, "true or false");
    if (typeof value !== "boolean") throw this.invalid(name, value, "true or false");
    return value;
  }

  string(name: string, fallback?: string): string {
    const value = this.get(name, fallback, "a string");
    if (typeof value !== "string") throw this.invalid(name, value, "a string");
    return value;
  }

  optionalObject(name: string): Fields | undefined {
    const value = this.raw[name];
    if (value == null) return undefined;
    if (typeof value !== "object" || Array.isArray(value)) throw this.invalid(name, value, "an object");
    return new Fields(value as Record<string, unknown>, this.file, `${this.qualified(name)}.`);
  }
}
