/**
 * Float64 reference forward passes of the Llama family and GPT-2, written from the math with
 * plain loops over the raw config.json object and the raw Hugging Face weights. They share no
 * code with the tfjs models, so a test comparing the two checks the models, not themselves.
 * Tiny sizes only: everything is O(n^2) loops over JavaScript arrays.
 */

/** Weights by Hugging Face name; values may be float64 (used for finite differences). */
export type ReferenceWeights = ReadonlyMap<string, { shape: readonly number[]; data: ArrayLike<number> }>;

export interface ReferenceInputs {
  /** Token ids [batch][seq]. */
  ids: number[][];
  /** [batch][seq], 1 = visible, 0 = padding. Every query must see at least one key. */
  mask?: number[][];
  /** Per layer: key and value [batch][kvHeads][prefixLength][headDim]. */
  prefix?: Array<{ key: number[][][][]; value: number[][][][] }>;
}

/** Logits [batch][seq][vocab]. */
export type Logits = number[][][];

type Vector = Float64Array;

function weight(weights: ReferenceWeights, ...names: string[]): ArrayLike<number> {
  for (const name of names) {
    const found = weights.get(name);
    if (found) return found.data;
  }
  throw new Error(`reference: no weight ${names.join(" or ")}`);
}

function optionalWeight(weights: ReferenceWeights, name: string): ArrayLike<number> | undefined {
  return weights.get(name)?.data;
}

/** y = W x + b with W stored [out, in] (nn.Linear). */
function linearOutIn(w: ArrayLike<number>, b: ArrayLike<number> | undefined, x: Vector, out: number): Vector {
  const inFeatures = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let sum = b ? b[o]! : 0;
    for (let i = 0; i < inFeatures; i++) sum += w[o * inFeatures + i]! * x[i]!;
    y[o] = sum;
  }
  return y;
}

/** y = x W + b with W stored [in, out] (GPT-2's Conv1D). */
function linearInOut(w: ArrayLike<number>, b: ArrayLike<number> | undefined, x: Vector, out: number): Vector {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let sum = b ? b[o]! : 0;
    for (let i = 0; i < x.length; i++) sum += x[i]! * w[i * out + o]!;
    y[o] = sum;
  }
  return y;
}

function row(matrix: ArrayLike<number>, index: number, width: number): Vector {
  const out = new Float64Array(width);
  for (let i = 0; i < width; i++) out[i] = matrix[index * width + i]!;
  return out;
}

function add(a: Vector, b: Vector): Vector {
  return a.map((value, i) => value + b[i]!);
}

function rmsNorm(x: Vector, g: ArrayLike<number>, eps: number): Vector {
  let meanSquare = 0;
  for (const value of x) meanSquare += value * value;
  meanSquare /= x.length;
  const scale = 1 / Math.sqrt(meanSquare + eps);
  return x.map((value, i) => value * scale * g[i]!);
}

function layerNorm(x: Vector, g: ArrayLike<number>, b: ArrayLike<number>, eps: number): Vector {
  const mean = x.reduce((sum, value) => sum + value, 0) / x.length;
  const variance = x.reduce((sum, value) => sum + (value - mean) ** 2, 0) / x.length;
  return x.map((value, i) => ((value - mean) / Math.sqrt(variance + eps)) * g[i]! + b[i]!);
}

/**
 * Attention of one query head over keys: softmax over the visible keys only of (q·k) * scale.
 * keys[j] and values[j] are headDim vectors.
 */
function attendOne(q: Vector, keys: Vector[], values: Vector[], visible: boolean[], scale: number): Vector {
  const scores = keys.map((k, j) => (visible[j] ? q.reduce((sum, qi, i) => sum + qi * k[i]!, 0) * scale : -Infinity));
  const max = Math.max(...scores);
  const weights = scores.map((s) => (s === -Infinity ? 0 : Math.exp(s - max)));
  const total = weights.reduce((sum, w) => sum + w, 0);
  const out = new Float64Array(q.length);
  values.forEach((v, j) => {
    for (let i = 0; i < out.length; i++) out[i] = out[i]! + (weights[j]! / total) * v[i]!;
  });
  return out;
}

function num(config: Record<string, unknown>, name: string, fallback?: number): number {
  const value = config[name] ?? fallback;
  if (typeof value !== "number") throw new Error(`reference: config has no ${name}`);
  return value;
}

/** Inverse rotary frequencies from config.json, rope_scaling included. */
function inverseFrequencies(config: Record<string, unknown>, headDim: number): number[] {
  const theta = num(config, "rope_theta", 10000);
  const base = Array.from({ length: headDim / 2 }, (_, i) => Math.pow(theta, -(2 * i) / headDim));
  const scaling = config.rope_scaling as Record<string, number | string> | undefined | null;
  const type = scaling?.rope_type ?? scaling?.type;
  if (!scaling || type === "default") return base;
  const factor = scaling.factor as number;
  if (type === "linear") return base.map((f) => f / factor);
  if (type === "llama3") {
    const low = scaling.low_freq_factor as number;
    const high = scaling.high_freq_factor as number;
    const original = scaling.original_max_position_embeddings as number;
    return base.map((f) => {
      const wavelength = (2 * Math.PI) / f;
      if (wavelength < original / high) return f;
      if (wavelength > original / low) return f / factor;
      const t = (original / wavelength - low) / (high - low);
      return (1 - t) * (f / factor) + t * f;
    });
  }
  throw new Error(`reference: rope type ${String(type)}`);
}

function rotate(x: Vector, position: number, frequencies: number[]): Vector {
  const half = x.length / 2;
  const out = new Float64Array(x.length);
  for (let i = 0; i < half; i++) {
    const angle = position * frequencies[i]!;
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    out[i] = x[i]! * c - x[i + half]! * s;
    out[i + half] = x[i + half]! * c + x[i]! * s;
  }
  return out;
}

function heads(x: Vector, count: number, size: number): Vector[] {
  return Array.from({ length: count }, (_, h) => x.slice(h * size, (h + 1) * size));
}

/** Llama / Mistral / Qwen2 logits, computed position by position in float64. */
export function referenceLlamaLogits(config: Record<string, unknown>, weights: ReferenceWeights, inputs: ReferenceInputs): Logits {
  const d = num(config, "hidden_size");
  const ffn = num(config, "intermediate_size");
  const layers = num(config, "num_hidden_layers");
  const numHeads = num(config, "num_attention_heads");
  const kvHeads = num(config, "num_key_value_heads", numHeads);
  const headDim = num(config, "head_dim", d / numHeads);
  const vocab = num(config, "vocab_size");
  const eps = num(config, "rms_norm_eps", 1e-6);
  const frequencies = inverseFrequencies(config, headDim);
  const embedding = weight(weights, "model.embed_tokens.weight");
  const head = config.tie_word_embeddings === true ? embedding : weight(weights, "lm_head.weight");
  const proj = (name: string, x: Vector, out: number) => linearOutIn(weight(weights, `${name}.weight`), optionalWeight(weights, `${name}.bias`), x, out);

  return inputs.ids.map((ids, b) => {
    const prefixLength = inputs.prefix?.[0]?.key[0]?.[0]?.length ?? 0;
    let hidden = ids.map((id) => row(embedding, id, d));
    for (let l = 0; l < layers; l++) {
      const p = `model.layers.${l}`;
      const normed = hidden.map((x) => rmsNorm(x, weight(weights, `${p}.input_layernorm.weight`), eps));
      const qs = normed.map((x, t) => heads(proj(`${p}.self_attn.q_proj`, x, numHeads * headDim), numHeads, headDim).map((q) => rotate(q, prefixLength + t, frequencies)));
      const ks = normed.map((x, t) => heads(proj(`${p}.self_attn.k_proj`, x, kvHeads * headDim), kvHeads, headDim).map((k) => rotate(k, prefixLength + t, frequencies)));
      const vs = normed.map((x) => heads(proj(`${p}.self_attn.v_proj`, x, kvHeads * headDim), kvHeads, headDim));
      const layerPrefix = inputs.prefix?.[l];
      hidden = hidden.map((x, t) => {
        const merged = new Float64Array(numHeads * headDim);
        for (let h = 0; h < numHeads; h++) {
          const kv = Math.floor(h / (numHeads / kvHeads));
          const prefixBatch = layerPrefix && layerPrefix.key.length > 1 ? b : 0;
          const keys = [...(layerPrefix?.key[prefixBatch]?.[kv] ?? []).map((k) => Float64Array.from(k)), ...ks.map((k) => k[kv]!)];
          const values = [...(layerPrefix?.value[prefixBatch]?.[kv] ?? []).map((v) => Float64Array.from(v)), ...vs.map((v) => v[kv]!)];
          const visible = keys.map((_, j) => j < prefixLength || (j - prefixLength <= t && (inputs.mask?.[b]?.[j - prefixLength] ?? 1) === 1));
          merged.set(attendOne(qs[t]![h]!, keys, values, visible, 1 / Math.sqrt(headDim)), h * headDim);
        }
        return add(x, proj(`${p}.self_attn.o_proj`, merged, d));
      });
      hidden = hidden.map((x) => {
        const m = rmsNorm(x, weight(weights, `${p}.post_attention_layernorm.weight`), eps);
        const gate = proj(`${p}.mlp.gate_proj`, m, ffn);
        const up = proj(`${p}.mlp.up_proj`, m, ffn);
        const activated = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]!);
        return add(x, proj(`${p}.mlp.down_proj`, activated, d));
      });
    }
    return hidden.map((x) => Array.from(linearOutIn(head, undefined, rmsNorm(x, weight(weights, "model.norm.weight"), eps), vocab)));
  });
}

/** GPT-2 logits in float64. Weight names may carry the "transformer." prefix or not. */
export function referenceGpt2Logits(config: Record<string, unknown>, weights: ReferenceWeights, inputs: ReferenceInputs): Logits {
  const d = num(config, "n_embd");
  const layers = num(config, "n_layer");
  const numHeads = num(config, "n_head");
  const vocab = num(config, "vocab_size");
  const inner = num(config, "n_inner", 4 * d);
  const eps = num(config, "layer_norm_epsilon", 1e-5);
  const headDim = d / numHeads;
  const w = (name: string) => weight(weights, `transformer.${name}`, name);
  const conv = (name: string, x: Vector, out: number) => linearInOut(w(`${name}.weight`), w(`${name}.bias`), x, out);
  const gelu = (x: number) =>
    config.activation_function === "gelu"
      ? 0.5 * x * (1 + erf(x / Math.SQRT2))
      : 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

  return inputs.ids.map((ids, b) => {
    let hidden = ids.map((id, t) => add(row(w("wte.weight"), id, d), row(w("wpe.weight"), t, d)));
    for (let l = 0; l < layers; l++) {
      const p = `h.${l}`;
      const qkv = hidden.map((x) => conv(`${p}.attn.c_attn`, layerNorm(x, w(`${p}.ln_1.weight`), w(`${p}.ln_1.bias`), eps), 3 * d));
      const qs = qkv.map((v) => heads(v.slice(0, d), numHeads, headDim));
      const ks = qkv.map((v) => heads(v.slice(d, 2 * d), numHeads, headDim));
      const vs = qkv.map((v) => heads(v.slice(2 * d), numHeads, headDim));
      hidden = hidden.map((x, t) => {
        const merged = new Float64Array(d);
        const visible = ids.map((_, j) => j <= t && (inputs.mask?.[b]?.[j] ?? 1) === 1);
        for (let h = 0; h < numHeads; h++) {
          merged.set(attendOne(qs[t]![h]!, ks.map((k) => k[h]!), vs.map((v) => v[h]!), visible, 1 / Math.sqrt(headDim)), h * headDim);
        }
        return add(x, conv(`${p}.attn.c_proj`, merged, d));
      });
      hidden = hidden.map((x) => {
        const m = layerNorm(x, w(`${p}.ln_2.weight`), w(`${p}.ln_2.bias`), eps);
        return add(x, conv(`${p}.mlp.c_proj`, conv(`${p}.mlp.c_fc`, m, inner).map(gelu), d));
      });
    }
    return hidden.map((x) => Array.from(linearOutIn(w("wte.weight"), undefined, layerNorm(x, w("ln_f.weight"), w("ln_f.bias"), eps), vocab)));
  });
}

/** erf by its Taylor series: float64-accurate for the |x| < 4 these tests see, saturated beyond. */
function erf(x: number): number {
  if (Math.abs(x) > 6) return Math.sign(x);
  let sum = 0;
  let term = x;
  for (let n = 0; n < 120; n++) {
    sum += term / (2 * n + 1);
    term *= (-x * x) / (n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}
