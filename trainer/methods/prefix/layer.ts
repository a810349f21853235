import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../../backend/linear.ts";
import type { KeyValuePrefix } from "../../model/model.ts";
import type { Rng } from "../../random.ts";
import { normalValues, trainableMatrix, type VirtualTokenTable } from "../prompt/virtual-tokens.ts";
import type { PrefixGeometry } from "./config.ts";

/**
 * A prefix table [tokens, layers * 2 * tokenDim] in PEFT's layout cut into each layer's key and
 * value: viewed as (tokens, 2 * layers, kvHeads, headDim), slot 2i is layer i's key and slot 2i+1
 * its value (PeftModel.get_prompt). Each comes out [1, kvHeads, tokens, headDim]; the model
 * broadcasts it over the batch. The keys go in as they are, without rotary embedding, as
 * Hugging Face's cache holds them.
 */
export function keyValuePrefix(table: tf.Tensor2D, geometry: PrefixGeometry): KeyValuePrefix[] {
  const { numLayers, keyValueHeads, headDim } = geometry;
  const tokens = table.shape[0];
  const slots = tf.transpose(tf.reshape(table, [tokens, 2 * numLayers, keyValueHeads, headDim]), [1, 2, 0, 3]);
  const pieces = tf.split(slots, 2 * numLayers, 0) as tf.Tensor4D[];
  return Array.from({ length: numLayers }, (_, i) => ({ key: pieces[2 * i]!, value: pieces[2 * i + 1]! }));
}

/**
 * PEFT's PrefixEncoder with prefix_projection: Embedding(tokens, tokenDim) -> Linear(tokenDim,
 * hidden) -> tanh -> Linear(hidden, layers * 2 * tokenDim), initialised as torch initialises
 * them (embedding N(0, 1); each Linear's weight and bias U(-1/sqrt(in), 1/sqrt(in))). Only its
 * output is saved: PEFT loads that as the prefix and drops the MLP.
 * Kernels are stored [in, out] so both products are plain matMuls.
 */
export class ProjectedPrefixTable implements VirtualTokenTable {
  readonly variables: ReadonlyMap<string, tf.Variable>;
  private readonly embedding: tf.Variable<tf.Rank.R2>;
  private readonly layers: Array<{ kernel: tf.Variable<tf.Rank.R2>; bias: tf.Variable<tf.Rank.R1> }>;

  constructor(tokens: number, geometry: PrefixGeometry, hidden: number, rng: Rng) {
    const { tokenDim, numLayers } = geometry;
    this.embedding = trainableMatrix(normalValues(tokens * tokenDim, rng), tokens, tokenDim);
    this.layers = [
      [tokenDim, hidden],
      [hidden, numLayers * 2 * tokenDim],
    ].map(([inFeatures, outFeatures]) => {
      const bound = 1 / Math.sqrt(inFeatures!);
      const kernel = trainableMatrix(rng.fillUniform(new Float32Array(inFeatures! * outFeatures!), -bound, bound), inFeatures!, outFeatures!);
      const initialBias = tf.tensor1d(rng.fillUniform(new Float32Array(outFeatures!), -bound, bound));
      const bias = tf.variable(initialBias, true) as tf.Variable<tf.Rank.R1>;
      initialBias.dispose();
      return { kernel, bias };
    });
    // PEFT's parameter names in training mode (transform.1 is the tanh).
    this.variables = new Map<string, tf.Variable>([
      ["prompt_encoder.embedding.weight", this.embedding],
      ["prompt_encoder.transform.0.weight", this.layers[0]!.kernel],
      ["prompt_encoder.transform.0.bias", this.layers[0]!.bias],
      ["prompt_encoder.transform.2.weight", this.layers[1]!.kernel],
      ["prompt_encoder.transform.2.bias", this.layers[1]!.bias],
    ]);
  }

  get tokens(): number {
    return this.embedding.shape[0];
  }

  compute(): tf.Tensor2D {
    return tf.tidy(() => {
      const [first, second] = this.layers as [(typeof this.layers)[0], (typeof this.layers)[0]];
      const hidden = tf.tanh(linear(this.embedding, first.kernel, first.bias));
      return linear(hidden, second.kernel, second.bias) as tf.Tensor2D;
    });
  }

  dispose(): void {
    for (const variable of this.variables.values()) variable.dispose();
  }
}
