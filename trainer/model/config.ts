/**
 * Model configuration read from a Hugging Face config.json, as plain data. Each supported
 * architecture maps to one of two families implemented in this folder: the Llama family
 * (llama.ts) and GPT-2 (gpt2.ts).
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
    };

/** Llama, Mistral and Qwen2: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention. */
export interface LlamaConfig {
  family: "llama";
  /** The Hugging Face class name, e.g. "Qwen2ForCausalLM". */
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | undefined;
  maxPositionEmbeddings: number;
  /** Bias on q_proj, k_proj and v_proj (Llama's attention_bias; always on in Qwen2). */
  qkvBias: boolean;
  /** Bias on o_proj (Llama's attention_bias; never in Qwen2). */
  outputProjectionBias: boolean;
  /** Bias on gate_proj, up_proj and down_proj (Llama's mlp_bias). */
  mlpBias: boolean;
  tieWordEmbeddings: boolean;
  /** Mistral's attention window; sequences longer than it are refused rather than computed wrongly. */
  slidingWindow: number | undefined;
}

/** GPT-2: learned positions, LayerNorm, GELU, Conv1D projections. */
export interface Gpt2Config {
  family: "gpt2";
  architecture: string;
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
}

export type ModelConfig = LlamaConfig | Gpt2Config;

/** Hugging Face architecture class names this trainer implements, with their family. */
export const SUPPORTED_ARCHITECTURES = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "llama",
  Qwen2ForCausalLM: "llama",
  GPT2LMHeadModel: "gpt2",
} as const;

export type Architecture = keyof typeof SUPPORTED_ARCHITECTURES;

/** Short names (config.json's model_type) accepted as an architecture override. */
const MODEL_TYPES: Record<string, Architecture> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
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
  const hiddenSize = fields.positiveInteger("hidden_size");
  const numHeads = fields.positiveInteger("num_attention_heads");
  const numKeyValueHeads = fields.positiveInteger("num_key_value_heads", numHeads);
  if (numHeads % numKeyValueHeads !== 0) {
    throw new ModelConfigError(
      fields.file,
      `field "num_key_value_heads" (${numKeyValueHeads}) must divide "num_attention_heads" (${numHeads})`,
    );
  }
  if (fields.raw.head_dim == null && hiddenSize % numHeads !== 0) {
    throw new ModelConfigError(fields.file, `field "hidden_size" (${hiddenSize}) must be a multiple of "num_attention_heads" (${numHeads}), or set "head_dim"`);
  }
  const headDim = fields.positiveInteger("head_dim", hiddenSize / numHeads);
  if (headDim % 2 !== 0) throw new ModelConfigError(fields.file, `field "head_dim" (${headDim}) must be even for rotary embeddings`);
  const hiddenAct = fields.string("hidden_act", "silu");
  if (hiddenAct !== "silu") {
    throw new ModelConfigError(fields.file, `field "hidden_act" is "${hiddenAct}"; the Llama family here supports "silu" only`);
  }
  const isQwen2 = architecture === "Qwen2ForCausalLM";
  const isMistral = architecture === "MistralForCausalLM";
  const attentionBias = !isQwen2 && !isMistral && fields.boolean("attention_bias", false);
  // Transformers 5 moved rope_theta and the scaling into one rope_parameters object.
  const ropeParameters = fields.optionalObject("rope_parameters");
  const ropeTheta = ropeParameters?.positiveNumber("rope_theta", 10000) ?? fields.positiveNumber("rope_theta", 10000);
  const maxPositionEmbeddings = fields.positiveInteger("max_position_embeddings", 2048);
  const slidingWindowEnabled = isMistral || (isQwen2 && fields.boolean("use_sliding_window", false));
  return {
    family: "llama",
    architecture,
    vocabSize: fields.positiveInteger("vocab_size"),
    hiddenSize,
    intermediateSize: fields.positiveInteger("intermediate_size"),
    numLayers: fields.positiveInteger("num_hidden_layers"),
    numHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps: fields.positiveNumber("rms_norm_eps", 1e-6),
    ropeTheta,
    ropeScaling: parseRopeScaling(ropeParameters ?? fields.optionalObject("rope_scaling"), maxPositionEmbeddings),
    maxPositionEmbeddings,
    qkvBias: isQwen2 || attentionBias,
    outputProjectionBias: attentionBias,
    mlpBias: !isQwen2 && !isMistral && fields.boolean("mlp_bias", false),
    tieWordEmbeddings: fields.boolean("tie_word_embeddings", false),
    slidingWindow: slidingWindowEnabled ? fields.optionalPositiveInteger("sliding_window") : undefined,
  };
}

function parseRopeScaling(scaling: Fields | undefined, maxPositionEmbeddings: number): RopeScaling | undefined {
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
  const field = scaling.qualified(scaling.raw.rope_type === undefined ? "type" : "rope_type");
  throw new ModelConfigError(
    scaling.file,
    `field "${field}" is ${JSON.stringify(type)}; supported rotary scaling types: default, linear, llama3`,
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
