import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, KeyValuePrefix } from "../../model/model.ts";
import type { PrefixGeometry } from "../prefix/config.ts";

/**
 * SK-tuning's zero-shot semantic representation for the prefix variant: the frozen model reads
 * the description's tokens once, and the keys and values every layer attends over for them
 * become the prefix table, in PEFT's layout [tokens, layers * 2 * tokenDim] (layer i's key in
 * slot 2i, its value in slot 2i+1; each slot kvHeads x headDim, token by token).
 *
 * They come from the model itself (CausalLM.keyValues), which hands over what its attention
 * computes: keys after the key norm (Qwen3, Gemma 3) and the rotary embedding of positions
 * 0 .. tokens-1 with the layer's own base and scaling (Gemma 3's sliding layers, LongRoPE's
 * factors and attention factor, Phi-3's partial rotary), split out of fused projections. That
 * is what a key/value cache holds, and since the model places the input after the prefix, the
 * step-0 model computes what the base model computes on the description followed by the input,
 * for every architecture the model supports, without this file knowing any of them.
 *
 * One exception, as in Hugging Face: LongRoPE chooses its rotary factors by the length of the
 * whole pass, so where the description alone fits in original_max_position_embeddings but the
 * description with an input does not, the prefix keys carry the short factors and the input's
 * the long ones (Transformers' Phi-3 drops its cache at that boundary when generating).
 */
export function descriptionKeyValues(model: CausalLM, ids: readonly number[], geometry: PrefixGeometry): Float32Array {
  const { numLayers, keyValueHeads, headDim, tokenDim } = geometry;
  const tokens = ids.length;
  const inputIds = tf.tensor2d([...ids], [1, tokens], "int32");
  let layers: KeyValuePrefix[];
  try {
    layers = model.keyValues({ inputIds });
  } finally {
    inputIds.dispose();
  }
  try {
    if (layers.length !== numLayers) throw new Error(`SK-tuning: the model gave keys and values for ${layers.length} layers, the prefix has ${numLayers}`);
    const expected = [1, keyValueHeads, tokens, headDim];
    for (const [i, { key, value }] of layers.entries()) {
      for (const tensor of [key, value]) {
        if (tensor.shape.join() !== expected.join()) {
          throw new Error(`SK-tuning: layer ${i}'s keys or values have shape [${tensor.shape.join(", ")}], the prefix expects [${expected.join(", ")}]`);
        }
      }
    }
    // [layers][key | value] of [1, kvHeads, tokens, headDim] -> [tokens, layers, 2, kvHeads, headDim].
    const table = tf.tidy(() => {
      const slots = tf.stack(layers.flatMap(({ key, value }) => [tf.squeeze(key, [0]), tf.squeeze(value, [0])]));
      return tf.reshape(tf.transpose(slots, [2, 0, 1, 3]), [tokens, numLayers * 2 * tokenDim]);
    });
    const values = Float32Array.from(table.dataSync() as Float32Array);
    table.dispose();
    return values;
  } finally {
    for (const { key, value } of layers) tf.dispose([key, value]);
  }
}
