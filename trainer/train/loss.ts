import * as tf from "@tensorflow/tfjs-core";
import { IGNORE_INDEX } from "../data/encode.ts";

/**
 * Next-token targets of a batch, as Hugging Face's causal-LM loss takes them: the logits at
 * position t predict labels[t + 1]; the last position of each row predicts nothing, and a
 * label of IGNORE_INDEX (prompt, padding) carries no loss.
 */
export interface NextTokenTargets {
  /** [rows * seqLength] target ids; 0 where there is no target (its weight is 0). */
  ids: Int32Array;
  /** [rows * seqLength] 1 where the position has a target, else 0. */
  mask: Float32Array;
  /** Positions with a target: the tokens the loss averages over. */
  count: number;
}

/** Shifts labels [rows, seqLength] (row-major) by one position into next-token targets. */
export function nextTokenTargets(labels: Int32Array, rows: number, seqLength: number): NextTokenTargets {
  if (labels.length !== rows * seqLength) throw new Error(`labels hold ${labels.length} values, expected ${rows} x ${seqLength}`);
  const ids = new Int32Array(labels.length);
  const mask = new Float32Array(labels.length);
  let count = 0;
  for (let row = 0; row < rows; row++) {
    for (let t = 0; t + 1 < seqLength; t++) {
      const label = labels[row * seqLength + t + 1]!;
      if (label === IGNORE_INDEX) continue;
      ids[row * seqLength + t] = label;
      mask[row * seqLength + t] = 1;
      count++;
    }
  }
  return { ids, mask, count };
}

/**
 * Σ over positions with a target of −log softmax(logits)[target], times `scale`, as a scalar.
 *
 * Why a custom gradient: the gradient is simply scale · mask · (softmax − onehot(target)), one
 * pass over [positions, vocab], where differentiating logSoftmax and a one-hot product would
 * build several tensors of that size.
 */
export function crossEntropySum(logits: tf.Tensor3D, targets: NextTokenTargets, scale = 1): tf.Scalar {
  const [rows, seqLength, vocab] = logits.shape;
  if (targets.ids.length !== rows * seqLength) {
    throw new Error(`targets hold ${targets.ids.length} positions, logits ${rows} x ${seqLength}`);
  }
  const flat = tf.reshape(logits, [rows * seqLength, vocab]) as tf.Tensor2D;
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [z, save] = args as [tf.Tensor2D, tf.GradSaveFunc];
    const ids = tf.tensor1d(targets.ids, "int32");
    const weights = tf.tensor1d(targets.mask.map((m) => m * scale));
    const logProbabilities = tf.sub(z, tf.logSumExp(z, -1, true));
    const flatIndices = tf.tensor1d(targets.ids.map((id, position) => position * vocab + id), "int32");
    const picked = tf.gather(tf.reshape(logProbabilities, [-1]), flatIndices);
    save([logProbabilities, ids, weights]);
    return {
      value: tf.neg(tf.sum(tf.mul(picked, weights))) as tf.Scalar,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [savedLogProbabilities, savedIds, savedWeights] = saved as [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D];
        const probabilities = tf.exp(savedLogProbabilities);
        // int32 then cast: the wasm backend's OneHot kernel returns zeros when asked for float32.
        const oneHot = tf.cast(tf.oneHot(savedIds, vocab), "float32");
        const rowScale = tf.reshape(tf.mul(savedWeights, dy), [-1, 1]);
        return [tf.mul(tf.sub(probabilities, oneHot), rowScale)];
      },
    };
  }) as (z: tf.Tensor2D) => tf.Scalar;
  return op(flat);
}
