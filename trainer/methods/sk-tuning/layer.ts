import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../../backend/linear.ts";
import type { PrefixGeometry } from "../prefix/config.ts";
import type { VirtualTokenTable } from "../prompt/virtual-tokens.ts";

/**
 * SK-tuning with projection: the semantic tokens stay frozen and a small trainable linear map,
 * identity at first, adapts them. The trained table is exported like any prompt or prefix, so
 * PEFT never sees the map.
 */

/** Prompt variant: embeddings E [tokens, hidden] frozen; the table is E W + b, W [hidden, hidden] from I, b from 0. */
export class ProjectedPromptTable implements VirtualTokenTable {
  readonly variables: ReadonlyMap<string, tf.Variable>;
  private readonly frozen: tf.Tensor2D;
  private readonly kernel: tf.Variable<tf.Rank.R2>;
  private readonly bias: tf.Variable<tf.Rank.R1>;

  constructor(embeddings: Float32Array, tokens: number, hidden: number) {
    this.frozen = tf.tensor2d(embeddings, [tokens, hidden]);
    this.kernel = owned(tf.eye(hidden) as tf.Tensor2D);
    this.bias = owned(tf.zeros([hidden]) as tf.Tensor1D);
    this.variables = new Map<string, tf.Variable>([
      ["sk_tuning.projection.weight", this.kernel],
      ["sk_tuning.projection.bias", this.bias],
    ]);
  }

  get tokens(): number {
    return this.frozen.shape[0];
  }

  compute(): tf.Tensor2D {
    return linear(this.frozen, this.kernel, this.bias) as tf.Tensor2D;
  }

  dispose(): void {
    tf.dispose([this.frozen, this.kernel, this.bias]);
  }
}

/**
 * Prefix variant: the description's keys and values [tokens, layers * 2 * tokenDim] frozen; each
 * layer's key and each layer's value get their own map over the head dimension, shared by the
 * key/value heads: W [2 * layers, headDim, headDim] from I, b [2 * layers, headDim] from 0. A few
 * thousand parameters per layer, whatever the number of heads.
 */
export class ProjectedPrefixKeyValues implements VirtualTokenTable {
  readonly variables: ReadonlyMap<string, tf.Variable>;
  private readonly frozen: tf.Tensor2D;
  private readonly kernel: tf.Variable<tf.Rank.R3>;
  private readonly bias: tf.Variable<tf.Rank.R2>;

  constructor(
    table: Float32Array,
    tokens: number,
    private readonly geometry: PrefixGeometry,
  ) {
    const { numLayers, headDim, tokenDim } = geometry;
    const slots = 2 * numLayers;
    this.frozen = tf.tensor2d(table, [tokens, slots * tokenDim]);
    this.kernel = owned(tf.tidy(() => tf.tile(tf.expandDims(tf.eye(headDim), 0), [slots, 1, 1])) as tf.Tensor3D);
    this.bias = owned(tf.zeros([slots, headDim]) as tf.Tensor2D);
    this.variables = new Map<string, tf.Variable>([
      ["sk_tuning.key_value_projection.weight", this.kernel],
      ["sk_tuning.key_value_projection.bias", this.bias],
    ]);
  }

  get tokens(): number {
    return this.frozen.shape[0];
  }

  compute(): tf.Tensor2D {
    return tf.tidy(() => {
      const { numLayers, keyValueHeads, headDim } = this.geometry;
      const slots = 2 * numLayers;
      const tokens = this.tokens;
      // [tokens, slots, kvHeads, headDim] -> [slots, tokens * kvHeads, headDim], one matMul per slot.
      const bySlot = tf.reshape(tf.transpose(tf.reshape(this.frozen, [tokens, slots, keyValueHeads, headDim]), [1, 0, 2, 3]), [slots, tokens * keyValueHeads, headDim]);
      const mapped = tf.add(tf.matMul(bySlot, this.kernel), tf.reshape(this.bias, [slots, 1, headDim]));
      const back = tf.transpose(tf.reshape(mapped, [slots, tokens, keyValueHeads, headDim]), [1, 0, 2, 3]);
      return tf.reshape(back, [tokens, slots * keyValueHeads * headDim]) as tf.Tensor2D;
    });
  }

  dispose(): void {
    tf.dispose([this.frozen, this.kernel, this.bias]);
  }
}

function owned<R extends tf.Rank>(initial: tf.Tensor<R>): tf.Variable<R> {
  const variable = tf.variable(initial, true);
  initial.dispose();
  return variable;
}
