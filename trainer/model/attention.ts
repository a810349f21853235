import * as tf from "@tensorflow/tfjs-core";

/**
 * Additive value for positions a query may not see. Finite rather than -Infinity, so a row
 * with nothing visible (a padding query) gives a harmless uniform softmax instead of NaN.
 */
const MASKED = -1e9;

/**
 * The additive attention bias [batch or 1, 1, seq, prefix + seq]: 0 where query i may attend to
 * key j, MASKED elsewhere. Keys are the prefix (always visible) then the input positions
 * (causal, and hidden where attentionMask is 0). With a sliding window, a query sees only keys
 * less than `slidingWindow` positions back, itself included (Transformers' sliding_window_overlay:
 * key > query - window), prefix keys counted as positions before the input.
 */
export function attentionBias(
  batch: number,
  seq: number,
  prefixLength: number,
  attentionMask: tf.Tensor2D | undefined,
  slidingWindow?: number,
): tf.Tensor4D {
  const total = prefixLength + seq;
  const causal = new Float32Array(seq * total);
  for (let i = 0; i < seq; i++) {
    const query = prefixLength + i;
    for (let j = 0; j < total; j++) {
      if (j > query || (slidingWindow !== undefined && j <= query - slidingWindow)) causal[i * total + j] = MASKED;
    }
  }
  const bias = tf.tensor4d(causal, [1, 1, seq, total]);
  if (!attentionMask) return bias;
  const [maskBatch, maskSeq] = attentionMask.shape;
  if (maskBatch !== batch || maskSeq !== seq) {
    throw new Error(`model forward: attentionMask has shape [${attentionMask.shape.join(", ")}], expected [${batch}, ${seq}]`);
  }
  let visible = tf.cast(attentionMask, "float32");
  if (prefixLength > 0) visible = tf.concat([tf.ones([batch, prefixLength]), visible], 1);
  const padding = tf.reshape(tf.mul(tf.sub(1, visible), MASKED), [batch, 1, 1, total]);
  return tf.add(bias, padding);
}

/**
 * Scaled dot-product attention with grouped-query heads.
 * q: [batch, heads, seq, headDim]; k, v: [batch, kvHeads, keys, headDim]; bias from attentionBias.
 * Returns [batch, seq, heads * headDim]. Query head h uses key/value head
 * floor(h / (heads / kvHeads)), as Hugging Face's repeat_kv. `probabilityMask`
 * [batch, heads, seq, keys] multiplies the attention probabilities (dropout in training).
 */
export function attention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, bias: tf.Tensor4D, scale: number, probabilityMask?: tf.Tensor): tf.Tensor3D {
  const [batch, heads, seq, headDim] = q.shape;
  const context = usePerHeadAttention()
    ? perHeadAttention(q, k, v, bias, scale, probabilityMask)
    : batchedAttention(q, k, v, bias, scale, probabilityMask);
  return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch, seq, heads * headDim]);
}

/**
 * Measured on wasm for 32 heads of 128 x 64: one batched matMul 32 ms, the same 32 products as
 * 2-D matMuls 4 ms, and cutting the heads apart with tf.split or tf.unstack another 20 ms.
 * Attention was half of a LoRA step of the benchmark model; the per-head path took a layer's
 * attention (forward and backward) from about 185 ms to 33 ms and the step from 1.6 s to 0.9 s.
 * So CPU backends use it; native TensorFlow, where reading tensors back is costly, keeps the
 * batched form.
 */
function usePerHeadAttention(): boolean {
  const backend = tf.getBackend();
  return backend === "wasm" || backend === "cpu";
}

/**
 * The batched form. The query heads that share a key/value head are folded into the sequence
 * axis, [batch, kvHeads, group * seq, headDim], so k and v need no copies. Returns
 * [batch, heads, seq, headDim].
 */
export function batchedAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  bias: tf.Tensor4D,
  scale: number,
  probabilityMask?: tf.Tensor,
): tf.Tensor4D {
  const [batch, heads, seq, headDim] = q.shape;
  const [, kvHeads, keys] = k.shape;
  const group = heads / kvHeads;
  const grouped = tf.reshape(q, [batch, kvHeads, group * seq, headDim]);
  const scores = tf.reshape(tf.matMul(grouped, k, false, true), [batch, heads, seq, keys]);
  const softmax = tf.softmax(tf.add(tf.mul(scores, scale), bias));
  const probs = probabilityMask ? tf.mul(softmax, probabilityMask) : softmax;
  const context = tf.matMul(tf.reshape(probs, [batch, kvHeads, group * seq, keys]), v);
  return tf.reshape(context, [batch, heads, seq, headDim]);
}

type GradientArgs = Array<tf.Tensor | tf.GradSaveFunc>;

/**
 * The same attention computed head by head with 2-D matMuls, with its backward pass written
 * out: with P = softmax(scale · Q Kᵀ + bias), M the probability mask (all ones without one) and
 * O = (P ⊙ M) V,
 *   dV = (P ⊙ M)ᵀ dO,  dP = (dO Vᵀ) ⊙ M,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dQ = scale · dS K,  dK = scale · dSᵀ Q.
 * Heads are cut out of the input values in JavaScript (cheap on CPU backends, where reading a
 * tensor is a copy), and key/value gradients of heads sharing a key/value head are summed.
 * Returns [batch, heads, seq, headDim].
 */
export function perHeadAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  bias: tf.Tensor4D,
  scale: number,
  probabilityMask?: tf.Tensor,
): tf.Tensor4D {
  const [batch, heads, seq, headDim] = q.shape;
  const [, kvHeads, keys] = k.shape;
  const maskValues = probabilityMask?.dataSync() as Float32Array | undefined;
  // Head h's mask [seq, keys], or undefined without dropout.
  const headMask = (head: number) =>
    maskValues ? tf.tensor2d(maskValues.subarray(head * seq * keys, (head + 1) * seq * keys), [seq, keys]) : undefined;
  const group = heads / kvHeads;
  const querySize = seq * headDim;
  const keySize = keys * headDim;
  const kvIndex = (head: number) => Math.floor(head / heads) * kvHeads + Math.floor((head % heads) / group);

  const op = tf.customGrad((...args: GradientArgs) => {
    const [query, key, value, save] = args as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D, tf.GradSaveFunc];
    const qValues = query.dataSync() as Float32Array;
    const kValues = key.dataSync() as Float32Array;
    const vValues = value.dataSync() as Float32Array;
    const slice = (values: Float32Array, index: number, rows: number) =>
      tf.tensor2d(values.subarray(index * rows * headDim, (index + 1) * rows * headDim), [rows, headDim]);
    // One bias matrix per batch row (a single one when the bias does not depend on the batch).
    const biasValues = bias.dataSync() as Float32Array;
    const biases = Array.from({ length: bias.shape[0] }, (_, row) =>
      tf.tensor2d(biasValues.subarray(row * seq * keys, (row + 1) * seq * keys), [seq, keys]),
    );

    const output = new Float32Array(batch * heads * querySize);
    const probabilities: tf.Tensor[] = [];
    for (let head = 0; head < batch * heads; head++) {
      const rowBias = biases[biases.length === 1 ? 0 : Math.floor(head / heads)]!;
      const probs = tf.tidy(() => {
        const scores = tf.matMul(slice(qValues, head, seq), tf.transpose(slice(kValues, kvIndex(head), keys)));
        const p = tf.softmax(tf.add(tf.mul(scores, scale), rowBias));
        const mask = headMask(head);
        output.set(tf.matMul(mask ? tf.mul(p, mask) : p, slice(vValues, kvIndex(head), keys)).dataSync() as Float32Array, head * querySize);
        return p;
      });
      probabilities.push(probs);
    }
    // Kept by tfjs only while a gradient tape records; freed after the backward pass.
    save(probabilities);

    return {
      value: tf.tensor4d(output, [batch, heads, seq, headDim]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const dyValues = dy.dataSync() as Float32Array;
        const dq = new Float32Array(qValues.length);
        const dk = new Float32Array(kValues.length);
        const dv = new Float32Array(vValues.length);
        for (let head = 0; head < batch * heads; head++) {
          tf.tidy(() => {
            const p = saved[head] as tf.Tensor2D;
            const kv = kvIndex(head);
            const dOut = slice(dyValues, head, seq);
            const mask = headMask(head);
            addAt(dv, tf.matMul(tf.transpose(mask ? tf.mul(p, mask) : p), dOut), kv * keySize);
            const dMaskedP = tf.matMul(dOut, tf.transpose(slice(vValues, kv, keys)));
            const dP = mask ? tf.mul(dMaskedP, mask) : dMaskedP;
            const dS = tf.mul(tf.mul(p, tf.sub(dP, tf.sum(tf.mul(dP, p), 1, true))), scale);
            dq.set(tf.matMul(dS, slice(kValues, kv, keys)).dataSync() as Float32Array, head * querySize);
            addAt(dk, tf.matMul(tf.transpose(dS), slice(qValues, head, seq)), kv * keySize);
          });
        }
        return [tf.tensor4d(dq, query.shape), tf.tensor4d(dk, key.shape), tf.tensor4d(dv, value.shape)];
      },
    };
  }) as (q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D) => tf.Tensor4D;
  return op(q, k, v);
}

/** target[offset ...] += values of `tensor`. */
function addAt(target: Float32Array, tensor: tf.Tensor, offset: number): void {
  const values = tensor.dataSync();
  for (let i = 0; i < values.length; i++) target[offset + i] = target[offset + i]! + values[i]!;
}

/** [batch, seq, heads * headDim] to [batch, heads, seq, headDim]. */
export function splitHeads(x: tf.Tensor, heads: number, headDim: number): tf.Tensor4D {
  const [batch, seq] = x.shape as [number, number, number];
  return tf.transpose(tf.reshape(x, [batch, seq, heads, headDim]), [0, 2, 1, 3]);
}
