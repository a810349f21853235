/**
 * Float64 reference forward passes of the Llama family (with Mistral's sliding window, Qwen3's
 * q/k norms, Phi-3's fused projections and partial rotary, Gemma 3's norms, scaled embeddings
 * and sliding layers) and GPT-2, written from the math with
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

/** x / rms(x) times g, or times (1 + g) as Gemma's norms compute it. */
function rmsNorm(x: Vector, g: ArrayLike<number>, eps: number, offset = 0): Vector {
  let meanSquare = 0;
  for (const value of x) meanSquare += value * value;
  meanSquare /= x.length;
  const scale = 1 / Math.sqrt(meanSquare + eps);
  return x.map((value, i) => value * scale * (offset + g[i]!));
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

/** Inverse rotary frequencies from config.json, rope_scaling included (none for Gemma's local base). */
function inverseFrequencies(config: Record<string, unknown>, headDim: number, localBase?: number): number[] {
  const theta = localBase ?? num(config, "rope_theta", 10000);
  const base = Array.from({ length: headDim / 2 }, (_, i) => Math.pow(theta, -(2 * i) / headDim));
  const scaling = (localBase === undefined ? config.rope_scaling : undefined) as Record<string, number | string> | undefined | null;
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

/** Rotary embedding of the first 2 * frequencies.length dimensions of x; the rest pass through. */
function rotate(x: Vector, position: number, frequencies: number[]): Vector {
  const half = frequencies.length;
  const out = Float64Array.from(x);
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

/**
 * Llama / Mistral / Qwen2 / Qwen3 / Gemma 3 / Phi-3 logits, computed position by position in
 * float64. Gemma 3 reads the older config.json fields (rope_theta, rope_local_base_freq,
 * rope_scaling) and layer_types; sliding layers see keys less than sliding_window positions back.
 */
export function referenceLlamaLogits(config: Record<string, unknown>, weights: ReferenceWeights, inputs: ReferenceInputs): Logits {
  const architecture = (config.architectures as string[] | undefined)?.[0];
  const gemma = architecture === "Gemma3ForCausalLM";
  const phi3 = architecture === "Phi3ForCausalLM";
  const qkNorm = gemma || architecture === "Qwen3ForCausalLM";
  const d = num(config, "hidden_size");
  const ffn = num(config, "intermediate_size");
  const layers = num(config, "num_hidden_layers");
  const numHeads = num(config, "num_attention_heads");
  const kvHeads = num(config, "num_key_value_heads", numHeads);
  const headDim = phi3 ? d / numHeads : num(config, "head_dim", d / numHeads);
  const rotaryDim = headDim * (phi3 ? num(config, "partial_rotary_factor", 1) : 1);
  const vocab = num(config, "vocab_size");
  const eps = num(config, "rms_norm_eps", 1e-6);
  const normOffset = gemma ? 1 : 0;
  const scale = gemma ? 1 / Math.sqrt(num(config, "query_pre_attn_scalar", 256)) : 1 / Math.sqrt(headDim);
  // Llama has no window; Qwen only with use_sliding_window.
  const qwen = architecture === "Qwen2ForCausalLM" || architecture === "Qwen3ForCausalLM";
  const windowed = architecture !== "LlamaForCausalLM" && (!qwen || config.use_sliding_window === true);
  const window = windowed ? ((config.sliding_window as number | null | undefined) ?? undefined) : undefined;
  const layerTypes = config.layer_types as string[] | undefined;
  const slides = (l: number) => window !== undefined && (layerTypes === undefined || layerTypes[l] === "sliding_attention");
  const globalFrequencies = inverseFrequencies(config, rotaryDim);
  const localFrequencies = gemma ? inverseFrequencies(config, rotaryDim, num(config, "rope_local_base_freq", 10000)) : globalFrequencies;
  const embedding = weight(weights, "model.embed_tokens.weight");
  const head = config.tie_word_embeddings === true ? embedding : weight(weights, "lm_head.weight");
  const proj = (name: string, x: Vector, out: number) => linearOutIn(weight(weights, `${name}.weight`), optionalWeight(weights, `${name}.bias`), x, out);
  const norm = (name: string, x: Vector) => rmsNorm(x, weight(weights, `${name}.weight`), eps, normOffset);
  const activation = (g: number) => (gemma ? 0.5 * g * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (g + 0.044715 * g ** 3))) : g / (1 + Math.exp(-g)));
  /** q, k, v of one position, from separate projections or Phi-3's qkv_proj (q, then k, then v). */
  const queryKeyValue = (p: string, x: Vector): [Vector, Vector, Vector] => {
    if (!phi3) {
      return [proj(`${p}.self_attn.q_proj`, x, numHeads * headDim), proj(`${p}.self_attn.k_proj`, x, kvHeads * headDim), proj(`${p}.self_attn.v_proj`, x, kvHeads * headDim)];
    }
    const qkv = proj(`${p}.self_attn.qkv_proj`, x, (numHeads + 2 * kvHeads) * headDim);
    const q = numHeads * headDim;
    const kv = kvHeads * headDim;
    return [qkv.slice(0, q), qkv.slice(q, q + kv), qkv.slice(q + kv)];
  };
  /** The gated MLP's input: gate and up, from separate projections or Phi-3's gate_up_proj (gate first). */
  const gateUp = (p: string, x: Vector): [Vector, Vector] => {
    if (!phi3) return [proj(`${p}.mlp.gate_proj`, x, ffn), proj(`${p}.mlp.up_proj`, x, ffn)];
    const both = proj(`${p}.mlp.gate_up_proj`, x, 2 * ffn);
    return [both.slice(0, ffn), both.slice(ffn)];
  };

  return inputs.ids.map((ids, b) => {
    const prefixLength = inputs.prefix?.[0]?.key[0]?.[0]?.length ?? 0;
    let hidden: Vector[] = ids.map((id) => row(embedding, id, d).map((value) => (gemma ? value * Math.sqrt(d) : value)));
    for (let l = 0; l < layers; l++) {
      const p = `model.layers.${l}`;
      const frequencies = slides(l) ? localFrequencies : globalFrequencies;
      const headNorm = (name: string, x: Vector) => (qkNorm ? norm(`${p}.self_attn.${name}`, x) : x);
      const projected = hidden.map((x) => queryKeyValue(p, norm(`${p}.input_layernorm`, x)));
      const qs = projected.map(([q], t) => heads(q, numHeads, headDim).map((h) => rotate(headNorm("q_norm", h), prefixLength + t, frequencies)));
      const ks = projected.map(([, k], t) => heads(k, kvHeads, headDim).map((h) => rotate(headNorm("k_norm", h), prefixLength + t, frequencies)));
      const vs = projected.map(([, , v]) => heads(v, kvHeads, headDim));
      const layerPrefix = inputs.prefix?.[l];
      hidden = hidden.map((x, t) => {
        const merged = new Float64Array(numHeads * headDim);
        const query = prefixLength + t;
        for (let h = 0; h < numHeads; h++) {
          const kv = Math.floor(h / (numHeads / kvHeads));
          const prefixBatch = layerPrefix && layerPrefix.key.length > 1 ? b : 0;
          const keys = [...(layerPrefix?.key[prefixBatch]?.[kv] ?? []).map((k) => Float64Array.from(k)), ...ks.map((k) => k[kv]!)];
          const values = [...(layerPrefix?.value[prefixBatch]?.[kv] ?? []).map((v) => Float64Array.from(v)), ...vs.map((v) => v[kv]!)];
          const visible = keys.map(
            (_, j) =>
              (j < prefixLength || (j <= query && (inputs.mask?.[b]?.[j - prefixLength] ?? 1) === 1)) && (!slides(l) || query - j < window!),
          );
          merged.set(attendOne(qs[t]![h]!, keys, values, visible, scale), h * headDim);
        }
        const attended = proj(`${p}.self_attn.o_proj`, merged, d);
        return add(x, gemma ? norm(`${p}.post_attention_layernorm`, attended) : attended);
      });
      hidden = hidden.map((x) => {
        const m = norm(gemma ? `${p}.pre_feedforward_layernorm` : `${p}.post_attention_layernorm`, x);
        const [gate, up] = gateUp(p, m);
        const out = proj(`${p}.mlp.down_proj`, gate.map((g, i) => activation(g) * up[i]!), d);
        return add(x, gemma ? norm(`${p}.post_feedforward_layernorm`, out) : out);
      });
    }
    return hidden.map((x) => Array.from(linearOutIn(head, undefined, norm("model.norm", x), vocab)));
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
