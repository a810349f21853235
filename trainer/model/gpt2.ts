import * as tf from "@tensorflow/tfjs-core";
import { attention, attentionBias, splitHeads } from "./attention.ts";
import type { Gpt2Config } from "./config.ts";
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
 * GPT-2 as Hugging Face's GPT2LMHeadModel computes it:
 *   h = wte(ids) + wpe(positions)
 *   per layer: h += attn.c_proj(attention(split(attn.c_attn(ln_1(h)))))
 *              h += mlp.c_proj(gelu(mlp.c_fc(ln_2(h))))
 *   logits = lm_head(ln_f(h)), lm_head tied to wte
 * The projections are Conv1D modules, whose weights Hugging Face stores [in, out]. In training,
 * dropout as config.json says, where GPT2Model has it: on wte + wpe (embd_pdrop), on the
 * attention probabilities (attn_pdrop) and on attn.c_proj's and mlp.c_proj's outputs
 * (resid_pdrop), with masks from the model's dropoutRng.
 */

/** Every weight of the model by Hugging Face name (GPT2LMHeadModel's, with "transformer."), with its shape. */
export function gpt2WeightShapes(config: Gpt2Config): Map<string, number[]> {
  const { hiddenSize: d, innerSize, vocabSize } = config;
  const shapes = new Map<string, number[]>();
  const conv1d = (path: string, inFeatures: number, out: number) => {
    shapes.set(`${path}.weight`, [inFeatures, out]);
    shapes.set(`${path}.bias`, [out]);
  };
  const layerNorm = (path: string) => {
    shapes.set(`${path}.weight`, [d]);
    shapes.set(`${path}.bias`, [d]);
  };
  shapes.set("transformer.wte.weight", [vocabSize, d]);
  shapes.set("transformer.wpe.weight", [config.maxPositions, d]);
  for (let i = 0; i < config.numLayers; i++) {
    const layer = `transformer.h.${i}`;
    layerNorm(`${layer}.ln_1`);
    conv1d(`${layer}.attn.c_attn`, d, 3 * d);
    conv1d(`${layer}.attn.c_proj`, d, d);
    layerNorm(`${layer}.ln_2`);
    conv1d(`${layer}.mlp.c_fc`, d, innerSize);
    conv1d(`${layer}.mlp.c_proj`, innerSize, d);
  }
  layerNorm("transformer.ln_f");
  if (!config.tieWordEmbeddings) shapes.set("lm_head.weight", [vocabSize, d]);
  return shapes;
}

interface Gpt2Layer {
  ln1: { weight: tf.Variable; bias: tf.Variable };
  attention: Linear;
  attentionProjection: Linear;
  ln2: { weight: tf.Variable; bias: tf.Variable };
  fc: Linear;
  mlpProjection: Linear;
}

export class Gpt2Model extends FrozenWeightsModel implements CausalLM {
  readonly outputHead: Linear;
  private readonly tokenEmbedding: tf.Variable;
  private readonly positionEmbedding: tf.Variable;
  private readonly layers: Gpt2Layer[] = [];
  private readonly lnF: { weight: tf.Variable; bias: tf.Variable };

  /** `weights`: float32 tensors by Hugging Face name (gpt2WeightShapes), consumed by the model. */
  constructor(
    readonly config: Gpt2Config,
    weights: Map<string, tf.Tensor>,
  ) {
    super(weights);
    const conv1d = (path: string) => this.register(this.weights.linear(path, "conv1d", true));
    const layerNorm = (path: string) => ({
      weight: this.weights.take(`${path}.weight`),
      bias: this.weights.take(`${path}.bias`),
    });
    this.tokenEmbedding = this.weights.take("transformer.wte.weight");
    this.positionEmbedding = this.weights.take("transformer.wpe.weight");
    for (let i = 0; i < config.numLayers; i++) {
      const layer = `transformer.h.${i}`;
      this.layers.push({
        ln1: layerNorm(`${layer}.ln_1`),
        attention: conv1d(`${layer}.attn.c_attn`),
        attentionProjection: conv1d(`${layer}.attn.c_proj`),
        ln2: layerNorm(`${layer}.ln_2`),
        fc: conv1d(`${layer}.mlp.c_fc`),
        mlpProjection: conv1d(`${layer}.mlp.c_proj`),
      });
    }
    this.lnF = layerNorm("transformer.ln_f");
    this.outputHead = this.register(
      config.tieWordEmbeddings
        ? this.weights.tiedLinear("lm_head", this.tokenEmbedding)
        : this.weights.linear("lm_head", "linear", false),
    );
  }

  embed(inputIds: tf.Tensor2D): tf.Tensor3D {
    return tf.gather(this.tokenEmbedding, inputIds) as tf.Tensor3D;
  }

  forward(inputs: ModelInputs): tf.Tensor3D {
    const { config } = this;
    const context = forwardContext(inputs);
    return tf.tidy(() => {
      const tokens = inputEmbeddings(this, inputs);
      const [batch, seq] = tokens.shape;
      const prefix = prefixLength(inputs.pastKeyValuesPrefix, config.numLayers);
      if (prefix + seq > config.maxPositions) {
        throw new Error(`model forward: ${prefix + seq} positions exceed GPT-2's n_positions (${config.maxPositions}); use a shorter maxSeqLength`);
      }
      const positions = tf.slice(this.positionEmbedding, [prefix, 0], [seq, config.hiddenSize]);
      let h = dropout(tf.add(tokens, positions), config.embeddingDropout, context.training, this.dropoutRng, "embedding") as tf.Tensor3D;
      const bias = attentionBias(batch, seq, prefix, inputs.attentionMask);
      const generators = this.dropoutRng && context.training ? [this.dropoutRng] : [];
      this.layers.forEach((layer, i) => {
        const weights = {
          modules: [layer.attention, layer.attentionProjection, layer.fc, layer.mlpProjection],
          variables: [layer.ln1.weight, layer.ln1.bias, layer.ln2.weight, layer.ln2.bias],
          generators,
        };
        h = transformerBlock(inputs, weights, h, inputs.pastKeyValuesPrefix?.[i], [bias], (x, prefix, [b]) => this.block(layer, i, x, b, prefix, context));
      });
      const hidden = layerNorm(h, this.lnF, config.layerNormEps);
      return inputs.skipOutputHead ? hidden : (this.outputHead.forward(hidden, context) as tf.Tensor3D);
    });
  }

  private block(
    layer: Gpt2Layer,
    index: number,
    h: tf.Tensor3D,
    bias: tf.Tensor4D,
    prefix: KeyValuePrefix | undefined,
    context: ForwardContext,
  ): tf.Tensor3D {
    const { numHeads, hiddenSize, layerNormEps, attentionDropout, residualDropout } = this.config;
    const { training } = context;
    const headDim = hiddenSize / numHeads;
    let scale = this.config.scaleAttnWeights ? 1 / Math.sqrt(headDim) : 1;
    if (this.config.scaleAttnByInverseLayerIdx) scale /= index + 1;

    const qkv = layer.attention.forward(layerNorm(h, layer.ln1, layerNormEps), context);
    const [q, k, v] = tf.split(qkv, 3, -1) as [tf.Tensor, tf.Tensor, tf.Tensor];
    const keys = withPrefix(prefix?.key, splitHeads(k, numHeads, headDim));
    const values = withPrefix(prefix?.value, splitHeads(v, numHeads, headDim));
    this.attendedKeyValues(keys, values);
    const [batch, , keyCount] = keys.shape;
    const probabilityMask =
      training && attentionDropout > 0
        ? dropoutMask([batch, numHeads, h.shape[1], keyCount], attentionDropout, this.dropoutRng, "attention")
        : undefined;
    const attended = attention(
      splitHeads(q, numHeads, headDim),
      keys,
      values,
      bias,
      scale,
      probabilityMask,
    );
    const attentionOutput = layer.attentionProjection.forward(attended, context);
    h = tf.add(h, dropout(attentionOutput, residualDropout, training, this.dropoutRng, "residual"));

    const hidden = layer.fc.forward(layerNorm(h, layer.ln2, layerNormEps), context);
    const mlpOutput = layer.mlpProjection.forward(this.activation(hidden), context);
    return tf.add(h, dropout(mlpOutput, residualDropout, training, this.dropoutRng, "residual"));
  }

  private activation(x: tf.Tensor): tf.Tensor {
    if (this.config.activation === "gelu") return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
    // gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI));
    return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(inner)));
  }
}

function layerNorm(x: tf.Tensor3D, { weight, bias }: { weight: tf.Tensor; bias: tf.Tensor }, eps: number): tf.Tensor3D {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), weight), bias);
}
