import * as tf from "@tensorflow/tfjs-core";

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  epsilon?: number;
  weightDecay?: number;
}

/** One trainable tensor and whether weight decay applies to it (not to biases and norms). */
export interface Parameter {
  name: string;
  variable: tf.Variable;
  decay: boolean;
}

/**
 * AdamW with decoupled weight decay, as torch.optim.AdamW computes it. The moments are plain
 * variables we own, so the state saves and restores as raw float32 bytes; tfjs's own
 * optimizer leaks tensors in getWeights/setWeights (TESTBED.md).
 */
export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
  /** Optimizer steps taken so far. */
  step = 0;
  private readonly moments: { m: tf.Variable; v: tf.Variable }[];

  constructor(
    readonly parameters: Parameter[],
    options: AdamWOptions = {},
  ) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.epsilon = options.epsilon ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0;
    this.moments = parameters.map(({ variable }) => ({
      m: tf.variable(tf.zerosLike(variable), false),
      v: tf.variable(tf.zerosLike(variable), false),
    }));
  }

  /** Applies one update with the given gradients (same order as parameters). */
  apply(gradients: tf.Tensor[], learningRate: number): void {
    this.step += 1;
    const correction1 = 1 - this.beta1 ** this.step;
    const correction2 = 1 - this.beta2 ** this.step;
    tf.tidy(() => {
      this.parameters.forEach(({ variable, decay }, index) => {
        const gradient = gradients[index]!;
        const { m, v } = this.moments[index]!;
        m.assign(tf.add(tf.mul(m, this.beta1), tf.mul(gradient, 1 - this.beta1)));
        v.assign(tf.add(tf.mul(v, this.beta2), tf.mul(tf.square(gradient), 1 - this.beta2)));
        const denominator = tf.add(tf.sqrt(tf.div(v, correction2)), this.epsilon);
        const update = tf.mul(tf.div(tf.div(m, correction1), denominator), learningRate);
        const decayed = decay && this.weightDecay > 0 ? tf.mul(variable, 1 - learningRate * this.weightDecay) : variable;
        variable.assign(tf.sub(decayed, update));
      });
    });
  }

  /** The moments as float32 arrays, in parameter order: m0, v0, m1, v1, ... */
  saveState(): Float32Array[] {
    return this.moments.flatMap(({ m, v }) => [m.dataSync() as Float32Array, v.dataSync() as Float32Array]);
  }

  loadState(step: number, state: Float32Array[]): void {
    if (state.length !== this.moments.length * 2) {
      throw new Error(`optimizer state has ${state.length} tensors, expected ${this.moments.length * 2}`);
    }
    this.step = step;
    this.moments.forEach(({ m, v }, index) => {
      tf.tidy(() => {
        m.assign(tf.tensor(state[2 * index]!, m.shape));
        v.assign(tf.tensor(state[2 * index + 1]!, v.shape));
      });
    });
  }

  dispose(): void {
    for (const { m, v } of this.moments) {
      m.dispose();
      v.dispose();
    }
  }
}

/**
 * Scales gradients so their global L2 norm is at most maxNorm, as torch.nn.utils.clip_grad_norm_
 * does: by min(1, maxNorm / (norm + 1e-6)). Returns the clipped gradients and the norm before
 * clipping, a scalar left on the device so that reading it does not stall the step on its own.
 */
export function clipByGlobalNorm(gradients: tf.Tensor[], maxNorm: number): { gradients: tf.Tensor[]; norm: tf.Scalar } {
  return tf.tidy(() => {
    const norm = tf.sqrt(tf.addN(gradients.map((gradient) => tf.sum(tf.square(gradient))))) as tf.Scalar;
    if (!(maxNorm > 0)) return { gradients: gradients.map((gradient) => tf.clone(gradient)), norm };
    const scale = tf.minimum(tf.div(maxNorm, tf.add(norm, 1e-6)), 1);
    return { gradients: gradients.map((gradient) => tf.mul(gradient, scale)), norm };
  });
}
