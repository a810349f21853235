import * as tf from "@tensorflow/tfjs-core";
import { attention, attentionBias, splitHeads } from "./attention.ts";
import type { AttentionKind, LlamaConfig } from "./config.ts";
import {
  FrozenWeightsModel,
  dropout,
  dropoutMask,
  forwardContext,
  inputEmbeddings,
  prefixLength,
  transformerBlock,
  withPrefix,
  type CausalLM,
  type ForwardContext,
  type KeyValuePrefix,
  type Linear,
  type ModelInputs,
} from "./model.ts";

/**
 * The Llama family as Hugging Face's LlamaForCausalLM computes it:
 *   h = embed(ids)
 *   per layer: h += o_proj(attention(rope(q_proj(rms(h))), rope(k_proj(rms(h))), v_proj(rms(h))))
 *              h += down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
 *   logits = lm_head(rms(h))
 * and its relatives, each a few config fields (config.ts): Mistral (sliding window), Qwen2 (qkv
 * bias), Qwen3 (RMSNorm on each head of q and k), Phi-3 (fused qkv_proj and gate_up_proj,
 * partial rotary), Gemma 3 (embeddings times sqrt(hidden), norms times (1 + w), a norm on each
 * sublayer's output too, GELU, its own attention scale, sliding layers with their own rotary base).
 */

/** Every weight of the model by Hugging Face name, with its shape. */
export function llamaWeightShapes(config: LlamaConfig): Map<string, number[]> {
  const { hiddenSize: d, intermediateSize: ffn, numHeads, numKeyValueHeads, headDim, vocabSize } = config;
  const shapes = new Map<string, number[]>();
  const linear = (path: string, out: number, inFeatures: number, bias: boolean) => {
    shapes.set(`${path}.weight`, [out, inFeatures]);
    if (bias) shapes.set(`${path}.bias`, [out]);
  };
  shapes.set("model.embed_tokens.weight", [vocabSize, d]);
  for (let i = 0; i < config.numLayers; i++) {
    const layer = `model.layers.${i}`;
    shapes.set(`${layer}.input_layernorm.weight`, [d]);
    if (config.fusedProjections) {
      linear(`${layer}.self_attn.qkv_proj`, (numHeads + 2 * numKeyValueHeads) * headDim, d, false);
    } else {
      linear(`${layer}.self_attn.q_proj`, numHeads * headDim, d, config.qkvBias);
      linear(`${layer}.self_attn.k_proj`, numKeyValueHeads * headDim, d, config.qkvBias);
      linear(`${layer}.self_attn.v_proj`, numKeyValueHeads * headDim, d, config.qkvBias);
    }
    linear(`${layer}.self_attn.o_proj`, d, numHeads * headDim, config.outputProjectionBias);
    if (config.qkNorm) {
      shapes.set(`${layer}.self_attn.q_norm.weight`, [headDim]);
      shapes.set(`${layer}.self_attn.k_norm.weight`, [headDim]);
    }
    shapes.set(`${layer}.post_attention_layernorm.weight`, [d]);
    if (config.sandwichNorms) {
      shapes.set(`${layer}.pre_feedforward_layernorm.weight`, [d]);
      shapes.set(`${layer}.post_feedforward_layernorm.weight`, [d]);
    }
    if (config.fusedProjections) {
      linear(`${layer}.mlp.gate_up_proj`, 2 * ffn, d, false);
    } else {
      linear(`${layer}.mlp.gate_proj`, ffn, d, config.mlpBias);
      linear(`${layer}.mlp.up_proj`, ffn, d, config.mlpBias);
    }
    linear(`${layer}.mlp.down_proj`, d, ffn, config.mlpBias);
  }
  shapes.set("model.norm.weight", [d]);
  if (!config.tieWordEmbeddings) shapes.set("lm_head.weight", [vocabSize, d]);
  return shapes;
}

/** Attention's projections: separate q, k, v, or Phi-3's one qkv_proj. */
type AttentionInput = { q: Linear; k: Linear; v: Linear } | { qkv: Linear };
/** The MLP's input projections: separate gate and up, or Phi-3's one gate_up_proj. */
type MlpInput = { gate: Linear; up: Linear } | { gateUp: Linear };

interface LlamaLayer {
  inputNorm: tf.Variable;
  attentionInput: AttentionInput;
  qNorm: tf.Variable | undefined;
  kNorm: tf.Variable | undefined;
  o: Linear;
  postAttentionNorm: tf.Variable;
  /** Gemma 3: the norm before the MLP (post_attention_layernorm then normalises the attention output). */
  preFeedforwardNorm: tf.Variable | undefined;
  postFeedforwardNorm: tf.Variable | undefined;
  mlpInput: MlpInput;
  down: Linear;
  kind: AttentionKind;
}

export class LlamaModel extends FrozenWeightsModel implements CausalLM {
  readonly outputHead: Linear;
  private readonly embedTokens: tf.Variable;
  private readonly layers: LlamaLayer[] = [];
  private readonly norm: tf.Variable;

  /** `weights`: float32 tensors by Hugging Face name (llamaWeightShapes), consumed by the model. */
  constructor(
    readonly config: LlamaConfig,
    weights: Map<string, tf.Tensor>,
  ) {
    super(weights);
    const take = (path: string, bias: boolean) => this.register(this.weights.linear(path, "linear", bias));
    const optional = (name: string, present: boolean) => (present ? this.weights.take(name) : undefined);
    this.embedTokens = this.weights.take("model.embed_tokens.weight");
    for (let i = 0; i < config.numLayers; i++) {
      const layer = `model.layers.${i}`;
      const inputNorm = this.weights.take(`${layer}.input_layernorm.weight`);
      // Registered in Hugging Face's module order, which is the order of named_modules().
      const attentionInput: AttentionInput = config.fusedProjections
        ? { qkv: take(`${layer}.self_attn.qkv_proj`, false) }
        : {
            q: take(`${layer}.self_attn.q_proj`, config.qkvBias),
            k: take(`${layer}.self_attn.k_proj`, config.qkvBias),
            v: take(`${layer}.self_attn.v_proj`, config.qkvBias),
          };
      const o = take(`${layer}.self_attn.o_proj`, config.outputProjectionBias);
      const qNorm = optional(`${layer}.self_attn.q_norm.weight`, config.qkNorm);
      const kNorm = optional(`${layer}.self_attn.k_norm.weight`, config.qkNorm);
      const mlpInput: MlpInput = config.fusedProjections
        ? { gateUp: take(`${layer}.mlp.gate_up_proj`, false) }
        : { gate: take(`${layer}.mlp.gate_proj`, config.mlpBias), up: take(`${layer}.mlp.up_proj`, config.mlpBias) };
      this.layers.push({
        inputNorm,
        attentionInput,
        qNorm,
        kNorm,
        o,
        mlpInput,
        down: take(`${layer}.mlp.down_proj`, config.mlpBias),
        postAttentionNorm: this.weights.take(`${layer}.post_attention_layernorm.weight`),
        preFeedforwardNorm: optional(`${layer}.pre_feedforward_layernorm.weight`, config.sandwichNorms),
        postFeedforwardNorm: optional(`${layer}.post_feedforward_layernorm.weight`, config.sandwichNorms),
        kind: config.layerTypes[i]!,
      });
    }
    this.norm = this.weights.take("model.norm.weight");
    this.outputHead = config.tieWordEmbeddings
      ? this.register(this.weights.tiedLinear("lm_head", this.embedTokens))
      : take("lm_head", false);
  }

  /** Token embeddings, times Gemma's sqrt(hidden_size) (as its scaled embedding module does; inputsEmbeds are taken as given). */
  embed(inputIds: tf.Tensor2D): tf.Tensor3D {
    const { embeddingScale } = this.config;
    return tf.tidy(() => {
      const embeddings = tf.gather(this.embedTokens, inputIds) as tf.Tensor3D;
      return embeddingScale === 1 ? embeddings : tf.mul(embeddings, embeddingScale);
    });
  }

  forward(inputs: ModelInputs): tf.Tensor3D {
    const { config } = this;
    const context = forwardContext(inputs);
    return tf.tidy(() => {
      let h = dropout(inputEmbeddings(this, inputs), config.embeddingDropout, context.training, this.dropoutRng, "embedding") as tf.Tensor3D;
      const [batch, seq] = h.shape;
      const prefix = prefixLength(inputs.pastKeyValuesPrefix, config.numLayers);
      // Per attention kind: the mask, and the rotary tables (the same unless Gemma's sliding layers have their own base).
      const fullBias = attentionBias(batch, seq, prefix, inputs.attentionMask);
      const biases = {
        full: fullBias,
        sliding: config.slidingWindow === undefined ? fullBias : attentionBias(batch, seq, prefix, inputs.attentionMask, config.slidingWindow),
      };
      const fullRotary = this.rotaryTables(config, prefix, seq);
      const { slidingRopeTheta } = config;
      const rotary = {
        full: fullRotary,
        sliding: slidingRopeTheta === undefined ? fullRotary : this.rotaryTables({ ...config, ropeTheta: slidingRopeTheta, ropeScaling: undefined }, prefix, seq),
      };
      const generators = this.dropoutRng && context.training ? [this.dropoutRng] : [];
      this.layers.forEach((layer, i) => {
        const weights = { modules: layerModules(layer), variables: layerNorms(layer), generators };
        const { cos, sin } = rotary[layer.kind];
        h = transformerBlock(inputs, weights, h, inputs.pastKeyValuesPrefix?.[i], [biases[layer.kind], cos, sin], (x, prefix, [b, c, s]) =>
          this.block(layer, x, b, { cos: c, sin: s }, prefix, context),
        );
      });
      const hidden = this.rmsNorm(h, this.norm);
      return inputs.skipOutputHead ? hidden : (this.outputHead.forward(hidden, context) as tf.Tensor3D);
    });
  }

  private block(
    layer: LlamaLayer,
    h: tf.Tensor3D,
    bias: tf.Tensor4D,
    rotary: RotaryTables,
    prefix: KeyValuePrefix | undefined,
    context: ForwardContext,
  ): tf.Tensor3D {
    const { numHeads, numKeyValueHeads, headDim, attentionScale, attentionDropout, residualDropout } = this.config;
    const x = this.rmsNorm(h, layer.inputNorm);
    const [qFlat, kFlat, vFlat] = this.queryKeyValue(layer.attentionInput, x, context);
    let q = splitHeads(qFlat, numHeads, headDim);
    let k = splitHeads(kFlat, numKeyValueHeads, headDim);
    if (layer.qNorm && layer.kNorm) {
      q = this.rmsNorm(q, layer.qNorm);
      k = this.rmsNorm(k, layer.kNorm);
    }
    q = applyRotary(q, rotary);
    k = withPrefix(prefix?.key, applyRotary(k, rotary));
    const v = withPrefix(prefix?.value, splitHeads(vFlat, numKeyValueHeads, headDim));
    this.attendedKeyValues(k, v);
    const probabilityMask =
      context.training && attentionDropout > 0
        ? dropoutMask([q.shape[0], numHeads, q.shape[2], k.shape[2]], attentionDropout, this.dropoutRng, "attention")
        : undefined;
    let attended: tf.Tensor = layer.o.forward(attention(q, k, v, bias, attentionScale, probabilityMask), context);
    // Gemma 3 normalises the attention output with post_attention_layernorm before the residual add.
    if (layer.preFeedforwardNorm) attended = this.rmsNorm(attended as tf.Tensor3D, layer.postAttentionNorm);
    h = tf.add(h, dropout(attended, residualDropout, context.training, this.dropoutRng, "residual"));

    const m = this.rmsNorm(h, layer.preFeedforwardNorm ?? layer.postAttentionNorm);
    const [gate, up] = this.gateUp(layer.mlpInput, m, context);
    const activated = this.config.activation === "silu" ? tf.mul(gate, tf.sigmoid(gate)) : geluTanh(gate);
    let mlpOut: tf.Tensor = layer.down.forward(tf.mul(activated, up), context);
    if (layer.postFeedforwardNorm) mlpOut = this.rmsNorm(mlpOut as tf.Tensor3D, layer.postFeedforwardNorm);
    return tf.add(h, dropout(mlpOut, residualDropout, context.training, this.dropoutRng, "residual"));
  }

  /** q, k, v [batch, seq, heads * headDim]; Phi-3's qkv_proj output is split in that order. */
  private queryKeyValue(input: AttentionInput, x: tf.Tensor, context: ForwardContext): [tf.Tensor, tf.Tensor, tf.Tensor] {
    if ("q" in input) return [input.q.forward(x, context), input.k.forward(x, context), input.v.forward(x, context)];
    const { numHeads, numKeyValueHeads, headDim } = this.config;
    const [q, k, v] = tf.split(input.qkv.forward(x, context), [numHeads * headDim, numKeyValueHeads * headDim, numKeyValueHeads * headDim], -1);
    return [q!, k!, v!];
  }

  /** gate and up [batch, seq, intermediate]; Phi-3's gate_up_proj output holds gate, then up. */
  private gateUp(input: MlpInput, x: tf.Tensor, context: ForwardContext): [tf.Tensor, tf.Tensor] {
    if ("gate" in input) return [input.gate.forward(x, context), input.up.forward(x, context)];
    const [gate, up] = tf.split(input.gateUp.forward(x, context), 2, -1);
    return [gate!, up!];
  }

  private rmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor): T {
    const { rmsNormEps, normWeightOffset } = this.config;
    const meanSquare = tf.mean(tf.square(x), -1, true);
    const scale = normWeightOffset === 0 ? weight : tf.add(weight, normWeightOffset);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, rmsNormEps))), scale);
  }

  /**
   * cos and sin [seq, rotaryDim] for positions offset .. offset + seq - 1, computed in float64,
   * with LongRoPE's choice of factors by the pass's length and its attention factor.
   */
  private rotaryTables(rope: Pick<LlamaConfig, "rotaryDim" | "ropeTheta" | "ropeScaling">, offset: number, seq: number): RotaryTables {
    const { rotaryDim, ropeScaling } = rope;
    const inverseFrequencies = ropeInverseFrequencies(rope, offset + seq);
    const magnitude = ropeScaling?.type === "longrope" ? ropeScaling.attentionFactor : 1;
    const half = rotaryDim / 2;
    const cos = new Float32Array(seq * rotaryDim);
    const sin = new Float32Array(seq * rotaryDim);
    for (let p = 0; p < seq; p++) {
      for (let i = 0; i < half; i++) {
        const angle = (offset + p) * inverseFrequencies[i]!;
        cos[p * rotaryDim + i] = cos[p * rotaryDim + i + half] = Math.cos(angle) * magnitude;
        sin[p * rotaryDim + i] = sin[p * rotaryDim + i + half] = Math.sin(angle) * magnitude;
      }
    }
    return { cos: tf.tensor2d(cos, [seq, rotaryDim]), sin: tf.tensor2d(sin, [seq, rotaryDim]) };
  }
}

function layerModules(layer: LlamaLayer): Linear[] {
  const attentionInput = "q" in layer.attentionInput ? [layer.attentionInput.q, layer.attentionInput.k, layer.attentionInput.v] : [layer.attentionInput.qkv];
  const mlpInput = "gate" in layer.mlpInput ? [layer.mlpInput.gate, layer.mlpInput.up] : [layer.mlpInput.gateUp];
  return [...attentionInput, layer.o, ...mlpInput, layer.down];
}

function layerNorms(layer: LlamaLayer): tf.Variable[] {
  const norms = [layer.inputNorm, layer.qNorm, layer.kNorm, layer.postAttentionNorm, layer.preFeedforwardNorm, layer.postFeedforwardNorm];
  return norms.filter((norm): norm is tf.Variable => norm !== undefined);
}

/** GELU's tanh approximation (gelu_pytorch_tanh): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
function geluTanh(x: tf.Tensor): tf.Tensor {
  const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI));
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(inner)));
}

interface RotaryTables {
  cos: tf.Tensor2D;
  sin: tf.Tensor2D;
}

/**
 * x * cos + rotate_half(x) * sin on the first rotaryDim dimensions of each head (the width of
 * the tables), with rotate_half(x) = [-x2, x1] over their two halves; the rest pass unchanged.
 */
function applyRotary(x: tf.Tensor4D, { cos, sin }: RotaryTables): tf.Tensor4D {
  const headDim = x.shape[3];
  const rotaryDim = cos.shape[1];
  const [turned, passed] = rotaryDim === headDim ? [x, undefined] : tf.split(x, [rotaryDim, headDim - rotaryDim], 3);
  const half = rotaryDim / 2;
  const [x1, x2] = tf.split(turned!, [half, half], 3);
  const rotated = tf.concat([tf.neg(x2!), x1!], 3);
  const embedded = tf.add(tf.mul(turned!, cos), tf.mul(rotated, sin)) as tf.Tensor4D;
  return passed ? (tf.concat([embedded, passed], 3) as tf.Tensor4D) : embedded;
}

/**
 * Rotary inverse frequencies theta^(-2i/rotaryDim), i < rotaryDim/2, for a pass over `positions`
 * positions, with config.json's rope_scaling applied as in Hugging Face's
 * _compute_linear_scaling / _compute_llama3_parameters / _compute_longrope_parameters.
 */
export function ropeInverseFrequencies(config: Pick<LlamaConfig, "rotaryDim" | "ropeTheta" | "ropeScaling">, positions = 0): Float64Array {
  const half = config.rotaryDim / 2;
  const frequencies = new Float64Array(half);
  for (let i = 0; i < half; i++) frequencies[i] = 1 / config.ropeTheta ** ((2 * i) / config.rotaryDim);
  const scaling = config.ropeScaling;
  if (!scaling) return frequencies;
  if (scaling.type === "linear") return frequencies.map((f) => f / scaling.factor);
  if (scaling.type === "longrope") {
    // As Transformers' longrope_frequency_update: the long factors once a pass goes past the original context.
    const factors = positions > scaling.originalMaxPositionEmbeddings ? scaling.longFactor : scaling.shortFactor;
    return frequencies.map((f, i) => f / factors[i]!);
  }

  // llama3: long wavelengths are divided by factor, short ones kept, the band between interpolated.
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: context } = scaling;
  const lowFreqWavelength = context / lowFreqFactor;
  const highFreqWavelength = context / highFreqFactor;
  return frequencies.map((f) => {
    const wavelength = (2 * Math.PI) / f;
    if (wavelength < highFreqWavelength) return f;
    if (wavelength > lowFreqWavelength) return f / factor;
    const smooth = (context / wavelength - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}
