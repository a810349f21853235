import * as tf from "@tensorflow/tfjs-core";
import { attention, attentionBias, splitHeads } from "./attention.ts";
import type { LlamaConfig } from "./config.ts";
import {
  FrozenWeightsModel,
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
 * The Llama family (Llama, Mistral, Qwen2, SmolLM) as Hugging Face's LlamaForCausalLM computes it:
 *   h = embed(ids)
 *   per layer: h += o_proj(attention(rope(q_proj(rms(h))), rope(k_proj(rms(h))), v_proj(rms(h))))
 *              h += down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
 *   logits = lm_head(rms(h))
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
    linear(`${layer}.self_attn.q_proj`, numHeads * headDim, d, config.qkvBias);
    linear(`${layer}.self_attn.k_proj`, numKeyValueHeads * headDim, d, config.qkvBias);
    linear(`${layer}.self_attn.v_proj`, numKeyValueHeads * headDim, d, config.qkvBias);
    linear(`${layer}.self_attn.o_proj`, d, numHeads * headDim, config.outputProjectionBias);
    shapes.set(`${layer}.post_attention_layernorm.weight`, [d]);
    linear(`${layer}.mlp.gate_proj`, ffn, d, config.mlpBias);
    linear(`${layer}.mlp.up_proj`, ffn, d, config.mlpBias);
    linear(`${layer}.mlp.down_proj`, d, ffn, config.mlpBias);
  }
  shapes.set("model.norm.weight", [d]);
  if (!config.tieWordEmbeddings) shapes.set("lm_head.weight", [vocabSize, d]);
  return shapes;
}

interface LlamaLayer {
  inputNorm: tf.Variable;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  postAttentionNorm: tf.Variable;
  gate: Linear;
  up: Linear;
  down: Linear;
}

export class LlamaModel extends FrozenWeightsModel implements CausalLM {
  readonly outputHead: Linear;
  private readonly embedTokens: tf.Variable;
  private readonly layers: LlamaLayer[] = [];
  private readonly norm: tf.Variable;
  private readonly inverseFrequencies: Float64Array;

  /** `weights`: float32 tensors by Hugging Face name (llamaWeightShapes), consumed by the model. */
  constructor(
    readonly config: LlamaConfig,
    weights: Map<string, tf.Tensor>,
  ) {
    super(weights);
    const take = (path: string, bias: boolean) => this.register(this.weights.linear(path, "linear", bias));
    this.embedTokens = this.weights.take("model.embed_tokens.weight");
    for (let i = 0; i < config.numLayers; i++) {
      const layer = `model.layers.${i}`;
      this.layers.push({
        inputNorm: this.weights.take(`${layer}.input_layernorm.weight`),
        q: take(`${layer}.self_attn.q_proj`, config.qkvBias),
        k: take(`${layer}.self_attn.k_proj`, config.qkvBias),
        v: take(`${layer}.self_attn.v_proj`, config.qkvBias),
        o: take(`${layer}.self_attn.o_proj`, config.outputProjectionBias),
        postAttentionNorm: this.weights.take(`${layer}.post_attention_layernorm.weight`),
        gate: take(`${layer}.mlp.gate_proj`, config.mlpBias),
        up: take(`${layer}.mlp.up_proj`, config.mlpBias),
        down: take(`${layer}.mlp.down_proj`, config.mlpBias),
      });
    }
    this.norm = this.weights.take("model.norm.weight");
    this.outputHead = config.tieWordEmbeddings
      ? this.register(this.weights.tiedLinear("lm_head", this.embedTokens))
      : take("lm_head", false);
    this.inverseFrequencies = ropeInverseFrequencies(config);
  }

  embed(inputIds: tf.Tensor2D): tf.Tensor3D {
    return tf.gather(this.embedTokens, inputIds) as tf.Tensor3D;
  }

  forward(inputs: ModelInputs): tf.Tensor3D {
    const { config } = this;
    const context = forwardContext(inputs);
    return tf.tidy(() => {
      let h = inputEmbeddings(this, inputs);
      const [batch, seq] = h.shape;
      const prefix = prefixLength(inputs.pastKeyValuesPrefix, config.numLayers);
      if (config.slidingWindow !== undefined && prefix + seq > config.slidingWindow) {
        throw new Error(
          `model forward: ${prefix + seq} positions exceed the model's sliding_window (${config.slidingWindow}), ` +
            "which this trainer does not implement; use a shorter maxSeqLength",
        );
      }
      const bias = attentionBias(batch, seq, prefix, inputs.attentionMask);
      const rotary = this.rotaryTables(prefix, seq);
      this.layers.forEach((layer, i) => {
        const weights = {
          modules: [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down],
          variables: [layer.inputNorm, layer.postAttentionNorm],
        };
        h = transformerBlock(inputs, weights, h, inputs.pastKeyValuesPrefix?.[i], [bias, rotary.cos, rotary.sin], (x, prefix, [b, cos, sin]) =>
          this.block(layer, x, b, { cos, sin }, prefix, context),
        );
      });
      const hidden = rmsNorm(h, this.norm, config.rmsNormEps);
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
    const { numHeads, numKeyValueHeads, headDim, rmsNormEps } = this.config;
    const x = rmsNorm(h, layer.inputNorm, rmsNormEps);
    const q = applyRotary(splitHeads(layer.q.forward(x, context), numHeads, headDim), rotary);
    const k = applyRotary(splitHeads(layer.k.forward(x, context), numKeyValueHeads, headDim), rotary);
    const v = splitHeads(layer.v.forward(x, context), numKeyValueHeads, headDim);
    const attended = attention(q, withPrefix(prefix?.key, k), withPrefix(prefix?.value, v), bias, 1 / Math.sqrt(headDim));
    h = tf.add(h, layer.o.forward(attended, context));

    const m = rmsNorm(h, layer.postAttentionNorm, rmsNormEps);
    const gate = layer.gate.forward(m, context);
    const activated = tf.mul(tf.mul(gate, tf.sigmoid(gate)), layer.up.forward(m, context));
    return tf.add(h, layer.down.forward(activated, context));
  }

  /** cos and sin [seq, headDim] for positions offset .. offset + seq - 1, computed in float64. */
  private rotaryTables(offset: number, seq: number): RotaryTables {
    const { headDim } = this.config;
    const half = headDim / 2;
    const cos = new Float32Array(seq * headDim);
    const sin = new Float32Array(seq * headDim);
    for (let p = 0; p < seq; p++) {
      for (let i = 0; i < half; i++) {
        const angle = (offset + p) * this.inverseFrequencies[i]!;
        cos[p * headDim + i] = cos[p * headDim + i + half] = Math.cos(angle);
        sin[p * headDim + i] = sin[p * headDim + i + half] = Math.sin(angle);
      }
    }
    return { cos: tf.tensor2d(cos, [seq, headDim]), sin: tf.tensor2d(sin, [seq, headDim]) };
  }
}

interface RotaryTables {
  cos: tf.Tensor2D;
  sin: tf.Tensor2D;
}

/** x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] over the two halves of headDim. */
function applyRotary(x: tf.Tensor4D, { cos, sin }: RotaryTables): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  const rotated = tf.concat([tf.neg(x2!), x1!], 3);
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
}

function rmsNorm(x: tf.Tensor3D, weight: tf.Tensor, eps: number): tf.Tensor3D {
  const meanSquare = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, eps))), weight);
}

/**
 * Rotary inverse frequencies theta^(-2i/headDim), i < headDim/2, with config.json's rope_scaling
 * applied as in Hugging Face's _compute_linear_scaling / _compute_llama3_parameters.
 */
export function ropeInverseFrequencies(config: LlamaConfig): Float64Array {
  const half = config.headDim / 2;
  const frequencies = new Float64Array(half);
  for (let i = 0; i < half; i++) frequencies[i] = 1 / config.ropeTheta ** ((2 * i) / config.headDim);
  const scaling = config.ropeScaling;
  if (!scaling) return frequencies;
  if (scaling.type === "linear") return frequencies.map((f) => f / scaling.factor);

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
