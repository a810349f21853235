import * as tf from "@tensorflow/tfjs-core";
import { Rng } from "../random.ts";

/**
 * Gradient checks for the PEFT methods' tests: the gradients tfjs computes (float32) for
 * L = sum(logits ⊙ c), c fixed random coefficients, against central finite differences of the
 * same L computed by a float64 reference from the parameters' values.
 */
export interface GradientCheck {
  /** L from tfjs and from the reference at the unperturbed values. */
  value: number;
  referenceValue: number;
  /** dL/dθ for every `stride`-th element of every variable: from tfjs, and from finite differences. */
  analytic: number[];
  numeric: number[];
}

export interface GradientCheckOptions {
  /** The logits [batch, seq, vocab] computed with the variables. */
  forward: () => tf.Tensor;
  /** The parameters to check, by a name the reference understands. */
  variables: ReadonlyMap<string, tf.Variable>;
  /** Flattened float64 logits for parameter values given in the variables' own shapes and layouts. */
  referenceLogits: (values: ReadonlyMap<string, Float64Array>) => ArrayLike<number>;
  /** Check every stride-th element of each variable (default 5). */
  stride?: number;
  epsilon?: number;
  seed?: number;
}

export function checkGradients(options: GradientCheckOptions): GradientCheck {
  const { variables, stride = 5, epsilon = 1e-5 } = options;
  let coefficients: Float32Array | undefined;
  const { value, grads } = tf.variableGrads(
    () =>
      tf.tidy(() => {
        const logits = options.forward();
        coefficients ??= Rng.fromSeed(options.seed ?? 21).fillUniform(new Float32Array(logits.size), -1, 1);
        return tf.sum(tf.mul(logits, tf.tensor(coefficients, logits.shape)));
      }) as tf.Scalar,
    [...variables.values()],
  );
  const loss = (values: ReadonlyMap<string, Float64Array>) => {
    const logits = options.referenceLogits(values);
    let sum = 0;
    for (let i = 0; i < logits.length; i++) sum += logits[i]! * coefficients![i]!;
    return sum;
  };
  const values = new Map([...variables].map(([name, variable]) => [name, Float64Array.from(variable.dataSync())]));
  const result: GradientCheck = { value: value.dataSync()[0]!, referenceValue: loss(values), analytic: [], numeric: [] };
  for (const [name, variable] of variables) {
    const gradient = grads[variable.name];
    if (!gradient) throw new Error(`checkGradients: no gradient reached ${name}`);
    const analytic = gradient.dataSync();
    const entry = values.get(name)!;
    for (let index = 0; index < entry.length; index += stride) {
      const original = entry[index]!;
      entry[index] = original + epsilon;
      const plus = loss(values);
      entry[index] = original - epsilon;
      const minus = loss(values);
      entry[index] = original;
      result.numeric.push((plus - minus) / (2 * epsilon));
      result.analytic.push(analytic[index]!);
    }
  }
  tf.dispose([value, ...Object.values(grads)]);
  return result;
}

/** Weights by Hugging Face name as float64 copies, for the reference models. */
export function float64Weights(weights: ReadonlyMap<string, { shape: readonly number[]; data: ArrayLike<number> }>): Map<string, { shape: readonly number[]; data: Float64Array }> {
  return new Map([...weights].map(([name, tensor]) => [name, { shape: tensor.shape, data: Float64Array.from(tensor.data) }]));
}
