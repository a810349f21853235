import * as tf from "@tensorflow/tfjs-core";
import { recordingGradients, valueAndGradients, withoutTape } from "../backend/recompute.ts";
import { IGNORE_INDEX } from "../data/encode.ts";
import type { ForwardContext, Linear } from "../model/model.ts";

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
 * Logits per chunk of positions: 2^24 floats, 64 MiB per [positions, vocab] tensor, of which a
 * chunk holds about six at its peak. A 151,936-token vocabulary gets 110 positions a chunk; a
 * small vocabulary gets every position in one chunk.
 */
const LOGITS_PER_CHUNK = 2 ** 24;

/** Positions per chunk for an output head: as many as fit LOGITS_PER_CHUNK logits, at least one. */
export function defaultChunkPositions(head: Linear): number {
  return Math.max(1, Math.floor(LOGITS_PER_CHUNK / head.outFeatures));
}

/** Throws unless `targets` has one entry per position of `hidden`; gives the number of positions. */
export function checkTargets(hidden: tf.Tensor3D, targets: NextTokenTargets): number {
  const [rows, seqLength] = hidden.shape;
  const positions = rows * seqLength;
  if (targets.ids.length !== positions) {
    throw new Error(`targets hold ${targets.ids.length} positions, hidden states ${rows} x ${seqLength}`);
  }
  return positions;
}

/** A run of positions, counted over the whole batch (row-major), that the head sees at once. */
export interface PositionChunk {
  start: number;
  size: number;
}

export interface CrossEntropyOptions {
  /** Multiplies the sum, e.g. 1 / target tokens of the step for a mean. Default 1. */
  scale?: number;
  /** Passed to the output head (training turns on its adapter's dropout). */
  context?: ForwardContext;
  /** Positions per chunk; by default as many as fit LOGITS_PER_CHUNK logits. */
  chunkPositions?: number;
}

/**
 * Σ over positions with a target of −log softmax(head(hidden))[target], times `scale`, as a
 * scalar, from the final hidden states [rows, seqLength, hidden] and the output head.
 *
 * Why chunks: logits are [positions, vocab], 311 MB for 512 positions of a 151,936-token
 * vocabulary, and their softmax and gradient as much again each; tfjs would keep them all until
 * the backward pass ends. Here the head and the loss run over a few positions at a time, and
 * while a gradient tape records, each chunk's gradients are taken right away, while its logits
 * exist: what the backward pass gets is only the gradient for the hidden states [positions,
 * hidden] and for the head's trainable variables (LoRA on lm_head, say), scaled by the incoming
 * gradient. Chunks without a target are skipped: they add nothing to the loss or the gradients.
 */
export function crossEntropySum(hidden: tf.Tensor3D, head: Linear, targets: NextTokenTargets, options: CrossEntropyOptions = {}): tf.Scalar {
  const positions = checkTargets(hidden, targets);
  const context = options.context ?? { training: false, disableAdapters: false };
  const scale = options.scale ?? 1;
  const perChunk = options.chunkPositions ?? defaultChunkPositions(head);
  const chunks: PositionChunk[] = [];
  for (let start = 0; start < positions; start += perChunk) {
    const size = Math.min(perChunk, positions - start);
    if (targets.mask.subarray(start, start + size).some((m) => m !== 0)) chunks.push({ start, size });
  }
  const weights = targets.mask.map((m) => m * scale);
  const chunkLoss = (x: tf.Tensor2D, { start, size }: PositionChunk) =>
    pickedLogProbabilitySum(head.forward(x, context) as tf.Tensor2D, targets.ids.subarray(start, start + size), weights.subarray(start, start + size), { negate: true });

  if (!recordingGradients()) {
    return tf.tidy(() => tf.addN([tf.scalar(0), ...chunkValues(hidden, chunks, chunkLoss)]));
  }

  // Bookkeeping outside the tape: only the op at the end is the outer tape's business.
  const variables = head.trainableVariables();
  const { loss, hiddenGradient, variableGradients } = withoutTape(() => tf.tidy(() => {
    const { values, hiddenGradient, groupGradients } = chunkGradients(hidden, chunks, variables, chunkLoss, 1, () => 0);
    return {
      loss: tf.addN([tf.scalar(0), ...values]) as tf.Scalar,
      hiddenGradient,
      variableGradients: groupGradients[0]!.map((sum, i) => sum ?? tf.zerosLike(variables[i]!)),
    };
  }));

  // An op from the hidden states and the head's variables to the loss whose gradient is the one
  // just computed; saved tensors stay until the backward pass ends.
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args.at(-1) as tf.GradSaveFunc;
    save([hiddenGradient, ...variableGradients]);
    return {
      value: tf.clone(loss),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => saved.map((gradient) => tf.mul(gradient, dy)),
    };
  }) as (...tensors: tf.Tensor[]) => tf.Scalar;
  const value = op(hidden, ...variables);
  tf.dispose([loss, hiddenGradient, ...variableGradients]);
  return value;
}

/**
 * Each chunk's value from `valueOf(x, chunk)`, x its rows of the flattened hidden states, without
 * gradients; each chunk runs in its own tidy, so only one chunk's logits exist at a time.
 */
export function chunkValues<C extends PositionChunk>(hidden: tf.Tensor3D, chunks: readonly C[], valueOf: (x: tf.Tensor2D, chunk: C) => tf.Scalar): tf.Scalar[] {
  const [rows, seqLength, width] = hidden.shape;
  const flat = tf.reshape(hidden, [rows * seqLength, width]) as tf.Tensor2D;
  return chunks.map((chunk) => tf.tidy(() => valueOf(chunkInput(flat, chunk), chunk)));
}

/**
 * The core of the chunked losses (crossEntropySum here, sequenceLogProbabilities in
 * objectives/log-probabilities.ts): per chunk, its value and its gradients for its hidden states
 * and for `variables`, taken right away while the chunk's logits exist. Gives each chunk's value,
 * the gradient for the hidden states (same shape; zeros at positions no chunk covers), and per
 * group (groupOf(chunk) < groups, e.g. the chunk's row) the gradient for each variable summed
 * over the group's chunks, null where none reached it. Run it outside the tape, inside a tidy.
 */
export function chunkGradients<C extends PositionChunk>(
  hidden: tf.Tensor3D,
  chunks: readonly C[],
  variables: readonly tf.Variable[],
  valueOf: (x: tf.Tensor2D, chunk: C) => tf.Scalar,
  groups: number,
  groupOf: (chunk: C) => number,
): { values: tf.Scalar[]; hiddenGradient: tf.Tensor; groupGradients: Array<Array<tf.Tensor | null>> } {
  const [rows, seqLength, width] = hidden.shape;
  const positions = rows * seqLength;
  const flat = tf.reshape(hidden, [positions, width]) as tf.Tensor2D;
  const values: tf.Scalar[] = [];
  // dHidden in position order: each chunk's gradient, zeros for the positions skipped.
  const pieces: tf.Tensor[] = [];
  const groupGradients: Array<Array<tf.Tensor | null>> = Array.from({ length: groups }, () => variables.map(() => null));
  let covered = 0;
  for (const chunk of chunks) {
    if (chunk.start > covered) pieces.push(tf.zeros([chunk.start - covered, width]));
    const x = chunkInput(flat, chunk);
    const { value, gradients } = valueAndGradients(() => valueOf(x, chunk), [x, ...variables]);
    x.dispose();
    const [dx, ...dVariables] = gradients;
    values.push(value);
    pieces.push(dx ?? tf.zeros([chunk.size, width]));
    const sums = groupGradients[groupOf(chunk)]!;
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
  return { values, hiddenGradient: tf.reshape(tf.concat(pieces, 0), hidden.shape), groupGradients };
}

function chunkInput(flat: tf.Tensor2D, { start, size }: PositionChunk): tf.Tensor2D {
  return tf.slice(flat, [start, 0], [size, flat.shape[1]]);
}

/**
 * Σ weights[p] · log softmax(logits[p])[ids[p]] over the positions of one chunk, negated when
 * `negate` (the cross-entropy).
 *
 * Why a custom gradient: the gradient is simply weight · (onehot(target) − softmax), negated
 * with the value, one pass over [positions, vocab], where differentiating logSoftmax and a
 * gather would build several tensors of that size. The picked entries are found by flat indices
 * position · vocab + id into this chunk alone, so they stay far below 2^31 whatever the batch
 * (indices over a whole batch of a 151,936-token vocabulary wrap around at 14,000 positions).
 */
export function pickedLogProbabilitySum(logits: tf.Tensor2D, ids: Int32Array, weights: Float32Array, { negate }: { negate: boolean }): tf.Scalar {
  const vocab = logits.shape[1];
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [z, save] = args as [tf.Tensor2D, tf.GradSaveFunc];
    const positionWeights = tf.tensor1d(weights);
    const logProbabilities = tf.sub(z, tf.logSumExp(z, -1, true));
    const flatIndices = tf.tensor1d(ids.map((id, position) => position * vocab + id), "int32");
    const picked = tf.gather(tf.reshape(logProbabilities, [-1]), flatIndices);
    save([logProbabilities, positionWeights]);
    const sum = tf.sum(tf.mul(picked, positionWeights));
    return {
      value: (negate ? tf.neg(sum) : sum) as tf.Scalar,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [savedLogProbabilities, savedWeights] = saved as [tf.Tensor2D, tf.Tensor1D];
          const probabilities = tf.exp(savedLogProbabilities);
          // int32 then cast: the wasm backend's OneHot kernel returns zeros when asked for float32.
          const oneHot = tf.cast(tf.oneHot(tf.tensor1d(ids, "int32"), vocab), "float32");
          const scale = tf.reshape(tf.mul(savedWeights, dy), [-1, 1]);
          return [tf.mul(negate ? tf.sub(probabilities, oneHot) : tf.sub(oneHot, probabilities), scale)];
        }),
    };
  }) as (z: tf.Tensor2D) => tf.Scalar;
  return op(logits);
}
