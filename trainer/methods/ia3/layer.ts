import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../../backend/linear.ts";
import type { Linear, LinearWrapper } from "../../model/model.ts";

/**
 * One IA3 module (Liu et al. 2022, "(IA)^3") around a frozen linear module, as PEFT's
 * ia3.Linear computes it, with a learned vector l that starts at ones (so the module starts out
 * computing exactly the base module):
 *   attention-side modules:   y = l ⊙ (W x + bias),  l [out]
 *   feed-forward modules:     y = W (l ⊙ x) + bias,  l [in]
 */
export class Ia3Layer implements LinearWrapper {
  /** l: [out], or [in] for a feed-forward module. */
  readonly vector: tf.Variable<tf.Rank.R1>;

  constructor(
    readonly module: Linear,
    readonly feedforward: boolean,
  ) {
    const initial = tf.ones([feedforward ? module.inFeatures : module.outFeatures]) as tf.Tensor1D;
    this.vector = tf.variable(initial, true);
    initial.dispose();
  }

  forward(x: tf.Tensor, module: Linear): tf.Tensor {
    if (this.feedforward) return linear(tf.mul(x, this.vector), module.kernel, module.bias);
    return tf.mul(module.base(x), this.vector);
  }

  variables(): tf.Variable[] {
    return [this.vector];
  }

  /** The kernel [in, out] with l folded in: its columns scaled by l [out], or its rows by l [in]. */
  mergedKernel(): tf.Tensor2D {
    return tf.tidy(() => (this.feedforward ? tf.mul(this.module.kernel, tf.reshape(this.vector, [-1, 1])) : tf.mul(this.module.kernel, this.vector)));
  }

  /** The bias with l folded in: PEFT scales the bias of an attention-side module, not of a feed-forward one. */
  mergedBias(): tf.Tensor1D | undefined {
    const { bias } = this.module;
    if (!bias) return undefined;
    return tf.tidy(() => (this.feedforward ? tf.clone(bias) : (tf.mul(bias, this.vector) as tf.Tensor1D)));
  }

  /** l in PEFT's layout: [out, 1], or [1, in] for a feed-forward module. */
  peftShape(): number[] {
    return this.feedforward ? [1, this.vector.size] : [this.vector.size, 1];
  }

  dispose(): void {
    this.vector.dispose();
  }
}
