import * as tf from "@tensorflow/tfjs-core";
import { recordingGradients, valueAndGradients, withoutTape } from "../backend/recompute.ts";
import type { ForwardContext, Linear } from "../model/model.ts";
import type { NextTokenTargets } from "../train/loss.ts";

/**
 * Logits per chunk of positions, as in the trainer's chunked cross-entropy (train/loss.ts): the
 * [positions, vocab] logits of a whole batch never exist at once.
 */
const LOGITS_PER_CHUNK = 2 ** 24;

export interface SequenceLogProbabilityOptions {
  /** Passed to the output head: training turns on its adapter's dropout; disableAdapters gives the reference model. */
  context?: ForwardContext;
  /** Positions per chunk; by default as many as fit LOGITS_PER_CHUNK logits (never more than a row). */
  chunkPositions?: number;
}

/**
 * Per row, Σ over the positions with a target of log softmax(head(hidden))[target]: the summed
 * log-probability of a sequence's completion (TRL's `logps` of chosen and rejected), [rows].
 *
 * The head and the log-softmax run a few positions at a time, as in crossEntropySum, and never
 * across two rows. While a gradient tape records, each chunk's gradient is taken right away,
 * while its logits exist, with weight 1 on each target: the gradient of row r's sum. A position
 * belongs to one row only, so the backward pass turns those into the gradient of any function
 * of the rows' sums by scaling each row's part by that row's incoming gradient: for the hidden
 * states [rows, seq, hidden] that is one saved tensor; for the head's trainable variables (LoRA
 * on lm_head) one gradient per row is kept, stacked.
 */
export function sequenceLogProbabilities(hidden: tf.Tensor3D, head: Linear, targets: NextTokenTargets, options: SequenceLogProbabilityOptions = {}): tf.Tensor1D {
  const [rows, seqLength, width] = hidden.shape;
  const positions = rows * seqLength;
  if (targets.ids.length !== positions) {
    throw new Error(`targets hold ${targets.ids.length} positions, hidden states ${rows} x ${seqLength}`);
  }
  const context = options.context ?? { training: false, disableAdapters: false };
  const perChunk = Math.min(seqLength, options.chunkPositions ?? Math.max(1, Math.floor(LOGITS_PER_CHUNK / head.outFeatures)));
  const chunks: Chunk[] = [];
  for (let row = 0; row < rows; row++) {
    for (let offset = 0; offset < seqLength; offset += perChunk) {
      const start = row * seqLength + offset;
      const size = Math.min(perChunk, seqLength - offset);
      if (targets.mask.subarray(start, start + size).some((m) => m !== 0)) chunks.push({ row, start, size });
    }
  }
  const chunkSum = (x: tf.Tensor2D, { start, size }: Chunk) =>
    pickedLogProbabilitySum(head.forward(x, context) as tf.Tensor2D, targets.ids.subarray(start, start + size), targets.mask.subarray(start, start + size));
  const inputOf = (flat: tf.Tensor2D, { start, size }: Chunk) => tf.slice(flat, [start, 0], [size, width]);
  // Per row, the sum of its chunks' values (a zero for a row without targets).
  const perRow = (values: Array<{ row: number; value: tf.Scalar }>): tf.Tensor1D =>
    tf.stack(Array.from({ length: rows }, (_, row) => tf.addN([tf.scalar(0), ...values.filter((v) => v.row === row).map((v) => v.value)]))) as tf.Tensor1D;

  if (!recordingGradients()) {
    return tf.tidy(() => {
      const flat = tf.reshape(hidden, [positions, width]) as tf.Tensor2D;
      return perRow(chunks.map((chunk) => ({ row: chunk.row, value: tf.tidy(() => chunkSum(inputOf(flat, chunk), chunk)) })));
    });
  }

  const variables = head.trainableVariables();
  const { value, hiddenGradient, rowGradients } = withoutTape(() =>
    tf.tidy(() => {
      const flat = tf.reshape(hidden, [positions, width]) as tf.Tensor2D;
      const values: Array<{ row: number; value: tf.Scalar }> = [];
      const pieces: tf.Tensor[] = [];
      // rowSums[row][i]: row's gradient for variables[i], summed over its chunks.
      const rowSums: Array<Array<tf.Tensor | null>> = Array.from({ length: rows }, () => variables.map(() => null));
      let covered = 0;
      for (const chunk of chunks) {
        if (chunk.start > covered) pieces.push(tf.zeros([chunk.start - covered, width]));
        const x = inputOf(flat, chunk);
        const result = valueAndGradients(() => chunkSum(x, chunk), [x, ...variables]);
        x.dispose();
        const [dx, ...dVariables] = result.gradients;
        values.push({ row: chunk.row, value: result.value });
        pieces.push(dx ?? tf.zeros([chunk.size, width]));
        const sums = rowSums[chunk.row]!;
        dVariables.forEach((gradient, i) => {
          const sum = sums[i];
          if (!gradient || !sum) {
            sums[i] = gradient ?? sum ?? null;
            return;
          }
          sums[i] = tf.add(sum, gradient);
          tf.dispose([sum, gradient]);
        });
        covered = chunk.start + chunk.size;
      }
      if (covered < positions) pieces.push(tf.zeros([positions - covered, width]));
      return {
        value: perRow(values),
        hiddenGradient: tf.reshape(tf.concat(pieces, 0), hidden.shape),
        // Per variable, [rows, size]: row r's gradient flattened.
        rowGradients: variables.map((variable, i) => tf.stack(rowSums.map((sums) => tf.reshape(sums[i] ?? tf.zerosLike(variable), [-1])))),
      };
    }),
  );

  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args.at(-1) as tf.GradSaveFunc;
    save([hiddenGradient, ...rowGradients]);
    return {
      value: tf.clone(value),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [dHidden, ...dRows] = saved as [tf.Tensor3D, ...tf.Tensor2D[]];
        return [
          tf.mul(dHidden, tf.reshape(dy, [rows, 1, 1])),
          ...dRows.map((stacked, i) => tf.reshape(tf.matMul(tf.reshape(dy, [1, rows]), stacked), variables[i]!.shape)),
        ];
      },
    };
  }) as (...tensors: tf.Tensor[]) => tf.Tensor1D;
  const result = op(hidden, ...variables);
  tf.dispose([value, hiddenGradient, ...rowGradients]);
  return result;
}

interface Chunk {
  row: number;
  /** First position, counted over the whole batch (row-major). */
  start: number;
  size: number;
}

/**
 * Σ weights[p] · log softmax(logits[p])[ids[p]] over the positions of one chunk, with the
 * gradient weight · (onehot(target) − softmax) in one pass over [positions, vocab] (as
 * train/loss.ts does for the cross-entropy, with the opposite sign). Flat indices stay within
 * the chunk, far below 2^31.
 */
function pickedLogProbabilitySum(logits: tf.Tensor2D, ids: Int32Array, weights: Float32Array): tf.Scalar {
  const vocab = logits.shape[1];
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [z, save] = args as [tf.Tensor2D, tf.GradSaveFunc];
    const positionWeights = tf.tensor1d(weights);
    const logProbabilities = tf.sub(z, tf.logSumExp(z, -1, true));
    const flatIndices = tf.tensor1d(ids.map((id, position) => position * vocab + id), "int32");
    const picked = tf.gather(tf.reshape(logProbabilities, [-1]), flatIndices);
    save([logProbabilities, positionWeights]);
    return {
      value: tf.sum(tf.mul(picked, positionWeights)) as tf.Scalar,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [savedLogProbabilities, savedWeights] = saved as [tf.Tensor2D, tf.Tensor1D];
          // int32 then cast: the wasm backend's OneHot kernel returns zeros when asked for float32.
          const oneHot = tf.cast(tf.oneHot(tf.tensor1d(ids, "int32"), vocab), "float32");
          const scale = tf.reshape(tf.mul(savedWeights, dy), [-1, 1]);
          return [tf.mul(tf.sub(oneHot, tf.exp(savedLogProbabilities)), scale)];
        }),
    };
  }) as (z: tf.Tensor2D) => tf.Scalar;
  return op(logits);
}
