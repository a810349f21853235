import * as tf from "@tensorflow/tfjs-core";
import "./gradients.ts";

/**
 * y = x · kernel (+ bias) for x of shape [..., in] and kernel of shape [in, out].
 *
 * Why not tf.matMul and its built-in gradient: on the wasm backend a matMul with transposeA or
 * transposeB set, or with batch dimensions, runs about ten times slower than a plain 2-D one
 * (TESTBED.md), and the built-in gradient uses exactly those flags. So x is flattened to 2-D
 * and the backward pass transposes explicitly:
 *   dx = dy · kernelᵀ,  dkernel = xᵀ · dy.
 *
 * Native TensorFlow is the other way round: its BLAS reads a transposed operand in place, while
 * an explicit transpose copies the whole matrix (for a 150k-vocabulary output head, 0.5 GB every
 * backward pass). There the backward pass passes the transpose flags instead.
 *
 * A kernel that is a non-trainable tf.Variable (a frozen base weight) is a constant here: it is
 * not an input of the gradient op, so the backward pass never spends a matMul on its gradient.
 * Any other kernel (a trainable variable, or a plain tensor under tf.grads) gets one.
 */
export function linear(x: tf.Tensor, kernel: tf.Tensor2D, bias?: tf.Tensor1D): tf.Tensor {
  const [inFeatures, outFeatures] = kernel.shape;
  const leading = x.shape.slice(0, -1);
  if (x.shape[x.shape.length - 1] !== inFeatures) {
    throw new Error(`linear: input has ${x.shape[x.shape.length - 1]} features, kernel expects ${inFeatures}`);
  }
  const x2d = tf.reshape(x, [-1, inFeatures]) as tf.Tensor2D;
  const frozen = kernel instanceof tf.Variable && !kernel.trainable;
  let y: tf.Tensor2D = frozen ? frozenKernelMatMul(x2d, kernel) : matMulWithExplicitTranspose(x2d, kernel);
  if (bias) y = tf.add(y, bias);
  return tf.reshape(y, [...leading, outFeatures]);
}

type GradientArgs = Array<tf.Tensor | tf.GradSaveFunc>;

const matMulWithExplicitTranspose = tf.customGrad((...args: GradientArgs) => {
  const [x, kernel, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.GradSaveFunc];
  save([x, kernel]);
  return {
    value: tf.matMul(x, kernel),
    gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => {
      const [savedX, savedKernel] = saved as [tf.Tensor2D, tf.Tensor2D];
      if (transposesInPlace()) return [tf.matMul(dy, savedKernel, false, true), tf.matMul(savedX, dy, true, false)];
      return [tf.matMul(dy, tf.transpose(savedKernel)), tf.matMul(tf.transpose(savedX), dy)];
    },
  };
}) as (x: tf.Tensor2D, kernel: tf.Tensor2D) => tf.Tensor2D;

function frozenKernelMatMul(x: tf.Tensor2D, kernel: tf.Tensor2D): tf.Tensor2D {
  // The kernel is captured, not passed: tfjs records no gradient edge to it.
  const op = tf.customGrad((...args: GradientArgs) => {
    const [input] = args as [tf.Tensor2D];
    return {
      value: tf.matMul(input, kernel),
      gradFunc: (dy: tf.Tensor2D) => [transposesInPlace() ? tf.matMul(dy, kernel, false, true) : tf.matMul(dy, tf.transpose(kernel))],
    };
  }) as (x: tf.Tensor2D) => tf.Tensor2D;
  return op(x);
}

/** Whether the backend multiplies by a transposed operand without copying it (native TensorFlow). */
function transposesInPlace(): boolean {
  return tf.getBackend() === "tensorflow";
}

/**
 * A tensor made from JavaScript values, held by the backend itself. Native TensorFlow keeps the
 * values of a new tensor in JavaScript until an op first reads them, then copies them into
 * TensorFlow; a model's weights, created all before any op, would so sit in memory twice. One
 * op (a reshape to the same shape, which TensorFlow does without a copy) moves them over, and
 * the JavaScript array becomes garbage at once. Other backends get the tensor as it is.
 */
export function backendOwned<T extends tf.Tensor>(tensor: T): T {
  if (!transposesInPlace()) return tensor;
  const owned = tf.reshape(tensor, tensor.shape) as T;
  tensor.dispose();
  return owned;
}
