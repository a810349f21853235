import * as tf from "@tensorflow/tfjs-core";

/**
 * Gradients for the tfjs kernels the trainer differentiates through.
 *
 * Why this file exists: @tensorflow/tfjs-core registers no gradients by itself. The union
 * package @tensorflow/tfjs does, from tfjs-core's dist/register_all_gradients.js, but that file
 * is an ES module with directory and extensionless imports that Node cannot load, and the union
 * package is not a dependency. So the trainer registers the gradients it needs, written from the
 * derivatives. A kernel that already has one (tfjs-node-gpu brings the full set) is left alone.
 *
 * Importing this module registers them; trainer/backend/backend.ts and linear.ts import it, so
 * any code that builds or trains a model has them.
 *
 * Each entry's gradFunc receives dy (an array for multi-output kernels), the tensors named in
 * inputsToSave followed by those in outputsToSave, and the kernel's attributes; it returns one
 * lazy gradient per input, evaluated only for inputs on a path to the trained variables.
 */

type Attrs = Record<string, unknown>;
type GradientMap = Record<string, () => tf.Tensor>;

interface Gradient {
  kernelName: string;
  inputsToSave?: string[];
  outputsToSave?: boolean[];
  saveAllInputs?: boolean;
  gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[], attrs: Attrs) => GradientMap;
}

/** Sums a broadcast result's gradient back to the shape of the input that was broadcast. */
function unbroadcast(gradient: tf.Tensor, shape: readonly number[]): tf.Tensor {
  const offset = gradient.rank - shape.length;
  const axes: number[] = [];
  for (let axis = 0; axis < gradient.rank; axis++) {
    const inputDim = axis < offset ? 1 : shape[axis - offset]!;
    if (axis < offset || (inputDim === 1 && gradient.shape[axis] !== 1)) axes.push(axis);
  }
  const summed = axes.length > 0 ? tf.sum(gradient, axes) : gradient;
  return tf.reshape(summed, [...shape]);
}

/** The shape a reduction's output has with keepDims, for broadcasting dy back over the input. */
function keptShape(shape: readonly number[], axis: unknown): number[] {
  const axes = tf.util.parseAxisParam((axis ?? null) as number | number[], [...shape]);
  return shape.map((dim, i) => (axes.includes(i) ? 1 : dim));
}

function single(dy: tf.Tensor | tf.Tensor[]): tf.Tensor {
  return Array.isArray(dy) ? dy[0]! : dy;
}

/** An elementwise kernel of one input x whose derivative is f'(x) (or f'(y) from the saved output y). */
function unary(kernelName: string, derivative: (saved: tf.Tensor) => tf.Tensor, from: "input" | "output" = "input"): Gradient {
  return {
    kernelName,
    ...(from === "input" ? { inputsToSave: ["x"] } : { outputsToSave: [true] }),
    gradFunc: (dy, [saved]) => ({ x: () => tf.mul(single(dy), derivative(saved!)) }),
  };
}

/** A broadcasting kernel of inputs a and b; `partials` gives dL/da and dL/db from a, b and dy. */
function binary(kernelName: string, partials: (a: tf.Tensor, b: tf.Tensor, dy: tf.Tensor) => [() => tf.Tensor, () => tf.Tensor]): Gradient {
  return {
    kernelName,
    inputsToSave: ["a", "b"],
    gradFunc: (dy, [a, b]) => {
      const [da, db] = partials(a!, b!, single(dy));
      return { a: () => unbroadcast(da(), a!.shape), b: () => unbroadcast(db(), b!.shape) };
    },
  };
}

const GRADIENTS: Gradient[] = [
  binary(tf.Add, (_a, _b, dy) => [() => dy, () => dy]),
  binary(tf.Sub, (_a, _b, dy) => [() => dy, () => tf.neg(dy)]),
  binary(tf.Multiply, (a, b, dy) => [() => tf.mul(dy, b), () => tf.mul(dy, a)]),
  binary(tf.RealDiv, (a, b, dy) => [() => tf.div(dy, b), () => tf.neg(tf.div(tf.mul(dy, a), tf.square(b)))]),
  binary(tf.SquaredDifference, (a, b, dy) => [() => tf.mul(dy, tf.mul(2, tf.sub(a, b))), () => tf.mul(dy, tf.mul(-2, tf.sub(a, b)))]),
  binary(tf.Maximum, (a, b, dy) => [
    () => tf.mul(dy, tf.cast(tf.greaterEqual(a, b), "float32")),
    () => tf.mul(dy, tf.cast(tf.less(a, b), "float32")),
  ]),
  binary(tf.Minimum, (a, b, dy) => [
    () => tf.mul(dy, tf.cast(tf.lessEqual(a, b), "float32")),
    () => tf.mul(dy, tf.cast(tf.greater(a, b), "float32")),
  ]),
  binary(tf.Pow, (a, b, dy) => [
    () => tf.mul(dy, tf.mul(b, tf.pow(a, tf.sub(b, 1)))),
    // d(a^b)/db = a^b log a, defined for a > 0 only.
    () => tf.mul(dy, tf.where(tf.greater(a, 0), tf.mul(tf.pow(a, b), tf.log(a)), tf.zerosLike(a))),
  ]),

  { kernelName: tf.Neg, gradFunc: (dy) => ({ x: () => tf.neg(single(dy)) }) },
  unary(tf.Square, (x) => tf.mul(x, 2)),
  unary(tf.Sqrt, (y) => tf.div(0.5, y), "output"),
  unary(tf.Rsqrt, (x) => tf.mul(-0.5, tf.div(tf.rsqrt(x), x))),
  unary(tf.Exp, (y) => y, "output"),
  unary(tf.Log, (x) => tf.reciprocal(x)),
  unary(tf.Sigmoid, (y) => tf.mul(y, tf.sub(1, y)), "output"),
  unary(tf.Tanh, (y) => tf.sub(1, tf.square(y)), "output"),
  unary(tf.Erf, (x) => tf.mul(2 / Math.sqrt(Math.PI), tf.exp(tf.neg(tf.square(x))))),
  unary(tf.Softplus, (x) => tf.sigmoid(x)),
  unary(tf.Relu, (x) => tf.cast(tf.greater(x, 0), "float32")),
  unary(tf.Abs, (x) => tf.sign(x)),
  { kernelName: tf.Identity, gradFunc: (dy) => ({ x: () => tf.clone(single(dy)) }) },
  // Only float gradients flow; casting an integer input has no gradient path in the trainer.
  { kernelName: tf.Cast, gradFunc: (dy) => ({ x: () => tf.clone(single(dy)) }) },
  {
    kernelName: tf.ClipByValue,
    inputsToSave: ["x"],
    gradFunc: (dy, [x], attrs) => ({
      x: () =>
        tf.mul(
          single(dy),
          tf.cast(tf.logicalAnd(tf.greaterEqual(x!, attrs.clipValueMin as number), tf.lessEqual(x!, attrs.clipValueMax as number)), "float32"),
        ),
    }),
  },
  {
    kernelName: tf.Select,
    inputsToSave: ["condition"],
    gradFunc: (dy, [condition]) => ({
      condition: () => tf.zeros(condition!.shape),
      t: () => tf.mul(single(dy), tf.cast(condition!, "float32")),
      e: () => tf.mul(single(dy), tf.cast(tf.logicalNot(tf.cast(condition!, "bool")), "float32")),
    }),
  },

  {
    kernelName: tf.Sum,
    inputsToSave: ["x"],
    gradFunc: (dy, [x], attrs) => ({ x: () => tf.mul(tf.reshape(single(dy), keptShape(x!.shape, attrs.axis)), tf.onesLike(x!)) }),
  },
  {
    kernelName: tf.Mean,
    inputsToSave: ["x"],
    gradFunc: (dy, [x], attrs) => {
      const shape = keptShape(x!.shape, attrs.axis);
      const count = x!.size / shape.reduce((a, b) => a * b, 1);
      return { x: () => tf.div(tf.mul(tf.reshape(single(dy), shape), tf.onesLike(x!)), count) };
    },
  },
  {
    kernelName: tf.Max,
    inputsToSave: ["x"],
    outputsToSave: [true],
    gradFunc: (dy, [x, y], attrs) => {
      const shape = keptShape(x!.shape, attrs.reductionIndices);
      // Every position equal to the maximum receives dy, as in TensorFlow.
      return { x: () => tf.mul(tf.reshape(single(dy), shape), tf.cast(tf.equal(x!, tf.reshape(y!, shape)), "float32")) };
    },
  },
  {
    kernelName: tf.AddN,
    saveAllInputs: true,
    gradFunc: (dy, saved) => Object.fromEntries(saved.map((_, i) => [String(i), () => tf.clone(single(dy))])),
  },

  { kernelName: tf.Reshape, inputsToSave: ["x"], gradFunc: (dy, [x]) => ({ x: () => tf.reshape(single(dy), x!.shape) }) },
  {
    kernelName: tf.Transpose,
    gradFunc: (dy, _saved, attrs) => {
      const perm = attrs.perm as number[];
      const inverse = perm.map((_, i) => perm.indexOf(i));
      return { x: () => tf.transpose(single(dy), inverse) };
    },
  },
  {
    kernelName: tf.Concat,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const axis = tf.util.parseAxisParam(attrs.axis as number, saved[0]!.shape)[0]!;
      const sizes = saved.map((input) => input.shape[axis]!);
      return Object.fromEntries(saved.map((_, i) => [String(i), () => tf.split(single(dy), sizes, axis)[i]!]));
    },
  },
  {
    kernelName: tf.SplitV,
    gradFunc: (dy, _saved, attrs) => ({ x: () => tf.concat(dy as tf.Tensor[], attrs.axis as number) }),
  },
  {
    kernelName: tf.Pack,
    gradFunc: (dy, _saved, attrs) => {
      const parts = tf.unstack(single(dy), attrs.axis as number);
      return Object.fromEntries(parts.map((part, i) => [String(i), () => part]));
    },
  },
  { kernelName: tf.Unpack, gradFunc: (dy, _saved, attrs) => ({ value: () => tf.stack(dy as tf.Tensor[], attrs.axis as number) }) },
  {
    kernelName: tf.Slice,
    inputsToSave: ["x"],
    gradFunc: (dy, [x], attrs) => {
      const [begin, size] = tf.slice_util.parseSliceParams(x!, attrs.begin as number[], attrs.size as number[]) as [number[], number[]];
      const paddings = x!.shape.map((dim, i) => [begin[i]!, dim - begin[i]! - size[i]!] as [number, number]);
      return { x: () => tf.pad(single(dy), paddings) };
    },
  },
  {
    kernelName: tf.Tile,
    inputsToSave: ["x"],
    gradFunc: (dy, [x], attrs) => {
      const reps = attrs.reps as number[];
      // dy [r0 * x0, r1 * x1, ...] viewed as [r0, x0, r1, x1, ...]: sum over the repetition axes.
      const interleaved = x!.shape.flatMap((dim, i) => [reps[i]!, dim]);
      const repetitionAxes = x!.shape.map((_, i) => 2 * i);
      return { x: () => tf.reshape(tf.sum(tf.reshape(single(dy), interleaved), repetitionAxes), x!.shape) };
    },
  },
  {
    kernelName: tf.BatchMatMul,
    inputsToSave: ["a", "b"],
    gradFunc: (dy, [a, b], attrs) => {
      const gradient = single(dy);
      const transposeA = attrs.transposeA as boolean;
      const transposeB = attrs.transposeB as boolean;
      // C = op(A) op(B); each case is the chain rule with op() undone.
      const da = () =>
        !transposeA
          ? tf.matMul(gradient, b!, false, !transposeB)
          : tf.matMul(b!, gradient, transposeB, true);
      const db = () =>
        !transposeB
          ? tf.matMul(a!, gradient, !transposeA, false)
          : tf.matMul(gradient, a!, true, transposeA);
      return { a: () => unbroadcast(da(), a!.shape), b: () => unbroadcast(db(), b!.shape) };
    },
  },
  {
    kernelName: tf.Softmax,
    outputsToSave: [true],
    gradFunc: (dy, [y], attrs) => {
      const dim = attrs.dim as number;
      const gradient = single(dy);
      return { logits: () => tf.mul(y!, tf.sub(gradient, tf.sum(tf.mul(gradient, y!), dim, true))) };
    },
  },
  {
    // Embedding rows along axis 0. A one-hot matMul instead of UnsortedSegmentSum, which the
    // wasm backend lacks; it costs ids x vocab x width, so embeddings train only when needed.
    kernelName: tf.GatherV2,
    inputsToSave: ["x", "indices"],
    gradFunc: (dy, [x, indices], attrs) => {
      const axis = tf.util.parseAxisParam(attrs.axis as number, x!.shape)[0];
      if (axis !== 0 || (attrs.batchDims as number) !== 0) {
        throw new Error(`gradient of gather is implemented along axis 0 without batch dims only (got axis ${axis})`);
      }
      return {
        x: () => {
          const [rows, ...rest] = x!.shape;
          const width = rest.reduce((a, b) => a * b, 1);
          const oneHot = tf.oneHot(tf.reshape(tf.cast(indices!, "int32"), [-1]), rows!);
          const flatDy = tf.reshape(single(dy), [-1, width]);
          return tf.reshape(tf.matMul(tf.transpose(tf.cast(oneHot, "float32")), flatDy), x!.shape);
        },
        indices: () => tf.zeros(indices!.shape),
      };
    },
  },
];

for (const gradient of GRADIENTS) {
  if (!tf.getGradient(gradient.kernelName)) tf.registerGradient(gradient as tf.GradConfig);
}

/** The kernels this module gives a gradient, for tests. */
export const REGISTERED_KERNELS: readonly string[] = GRADIENTS.map((gradient) => gradient.kernelName);
