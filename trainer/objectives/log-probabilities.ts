import * as tf from "@tensorflow/tfjs-core";
import { recordingGradients, withoutTape } from "../backend/recompute.ts";
import type { ForwardContext, Linear } from "../model/model.ts";
import { checkTargets, chunkGradients, chunkValues, defaultChunkPositions, pickedLogProbabilitySum, type NextTokenTargets, type PositionChunk } from "../train/loss.ts";

export interface SequenceLogProbabilityOptions {
  /** Passed to the output head: training turns on its adapter's dropout; disableAdapters gives the reference model. */
  context?: ForwardContext;
  /** Positions per chunk; by default as many as fit the trainer's logits budget (train/loss.ts), never more than a row. */
  chunkPositions?: number;
}

/**
 * Per row, Σ over the positions with a target of log softmax(head(hidden))[target]: the summed
 * log-probability of a sequence's completion (TRL's `logps` of chosen and rejected), [rows].
 *
 * The head and the log-softmax run a few positions at a time, as in crossEntropySum (whose chunk
 * machinery this shares: the [positions, vocab] logits of a batch never exist at once), and never
 * across two rows. While a gradient tape records, each chunk's gradient is taken right away,
 * while its logits exist, with weight 1 on each target: the gradient of row r's sum. A position
 * belongs to one row only, so the backward pass turns those into the gradient of any function
 * of the rows' sums by scaling each row's part by that row's incoming gradient: for the hidden
 * states [rows, seq, hidden] that is one saved tensor; for the head's trainable variables (LoRA
 * on lm_head) one gradient per row is kept, stacked.
 */
export function sequenceLogProbabilities(hidden: tf.Tensor3D, head: Linear, targets: NextTokenTargets, options: SequenceLogProbabilityOptions = {}): tf.Tensor1D {
  const [rows, seqLength] = hidden.shape;
  checkTargets(hidden, targets);
  const context = options.context ?? { training: false, disableAdapters: false };
  const perChunk = Math.min(seqLength, options.chunkPositions ?? defaultChunkPositions(head));
  const chunks: Chunk[] = [];
  for (let row = 0; row < rows; row++) {
    for (let offset = 0; offset < seqLength; offset += perChunk) {
      const start = row * seqLength + offset;
      const size = Math.min(perChunk, seqLength - offset);
      if (targets.mask.subarray(start, start + size).some((m) => m !== 0)) chunks.push({ row, start, size });
    }
  }
  const chunkSum = (x: tf.Tensor2D, { start, size }: Chunk) =>
    pickedLogProbabilitySum(head.forward(x, context) as tf.Tensor2D, targets.ids.subarray(start, start + size), targets.mask.subarray(start, start + size), { negate: false });
  // Per row, the sum of its chunks' values (one value per chunk; a zero for a row without targets).
  const perRow = (values: readonly tf.Scalar[]): tf.Tensor1D =>
    tf.stack(Array.from({ length: rows }, (_, row) => tf.addN([tf.scalar(0), ...values.filter((_, i) => chunks[i]!.row === row)]))) as tf.Tensor1D;

  if (!recordingGradients()) {
    return tf.tidy(() => perRow(chunkValues(hidden, chunks, chunkSum)));
  }

  const variables = head.trainableVariables();
  const { value, hiddenGradient, rowGradients } = withoutTape(() =>
    tf.tidy(() => {
      // groupGradients[row][i]: row's gradient for variables[i], summed over its chunks.
      const { values, hiddenGradient, groupGradients } = chunkGradients(hidden, chunks, variables, chunkSum, rows, (chunk) => chunk.row);
      return {
        value: perRow(values),
        hiddenGradient,
        // Per variable, [rows, size]: row r's gradient flattened.
        rowGradients: variables.map((variable, i) => tf.stack(groupGradients.map((sums) => tf.reshape(sums[i] ?? tf.zerosLike(variable), [-1])))),
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

/** A chunk of one row's positions. */
interface Chunk extends PositionChunk {
  row: number;
}
