import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../../backend/linear.ts";
import type { ForwardContext, Linear } from "../../model/model.ts";
import type { Rng } from "../../random.ts";
import { LoraLayer } from "../lora/layer.ts";

/**
 * One DoRA module (weight-decomposed low-rank adaptation, Liu et al. 2024) around a frozen
 * linear module W [out, in], as PEFT's DoraLinearLayer computes it:
 *   n = ||W + s·B A|| per output row (the norm over the `in` axis), a constant for backprop
 *   y = (m / n) ⊙ (W x + s·B A x) + bias
 * m [out] starts at the row norms of W and B at zero, so m / n = 1 and the module starts out
 * computing exactly W x + bias. The LoRA part (A, B, scale, dropout) is LoRA's own layer.
 *
 * With dropout in training, PEFT applies the magnitude to the dropped input only:
 *   y = W x + bias + (m / n - 1) ⊙ W dropout(x) + (m / n) ⊙ s·B A dropout(x)
 * and so does this layer.
 *
 * The kernel is stored [in, out] (Wᵀ), so W's rows are the kernel's columns: the norm is over axis 0.
 */
export class DoraLayer extends LoraLayer {
  /** m, [out]: the trained magnitude of each output row. */
  readonly magnitude: tf.Variable<tf.Rank.R1>;
  /** n for the current A and B, with a zero gradient: the paper's section 4.3, and PEFT's weight_norm.detach(). */
  private readonly detachedWeightNorm: (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor1D;

  constructor(module: Linear, r: number, scale: number, dropout: number, rng: Rng) {
    super(module, r, scale, dropout, rng);
    const initial = tf.tidy(() => columnNorms(module.kernel));
    this.magnitude = tf.variable(initial, true);
    initial.dispose();
    this.detachedWeightNorm = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
      const [a, b] = args as [tf.Tensor2D, tf.Tensor2D];
      return {
        value: columnNorms(tf.add(module.kernel, tf.mul(tf.matMul(a, b), scale))),
        gradFunc: () => [tf.zerosLike(a), tf.zerosLike(b)],
      };
    }) as (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor1D;
  }

  override forward(x: tf.Tensor, module: Linear, context: ForwardContext): tf.Tensor {
    const dropped = context.training && this.dropout > 0;
    const input = dropped ? this.applyDropout(x) : x;
    const update = tf.mul(linear(linear(input, this.a), this.b), this.scale);
    const factor = this.magnitudeFactor();
    if (!dropped) {
      const scaled = tf.mul(tf.add(linear(x, module.kernel), update), factor);
      return module.bias ? tf.add(scaled, module.bias) : scaled;
    }
    return tf.add(module.base(x), tf.add(tf.mul(linear(input, module.kernel), tf.sub(factor, 1)), tf.mul(update, factor)));
  }

  override variables(): tf.Variable[] {
    return [this.a, this.b, this.magnitude];
  }

  /** W' = (m / n) ⊙ (W + s·B A) per output row, as PEFT's merge (kernel layout [in, out], so per column). */
  override mergedKernel(): tf.Tensor2D {
    return tf.tidy(() => tf.mul(super.mergedKernel(), this.magnitudeFactor()));
  }

  /** The current weight norm n [out]. */
  weightNorm(): tf.Tensor1D {
    return this.detachedWeightNorm(this.a, this.b);
  }

  override dispose(): void {
    super.dispose();
    this.magnitude.dispose();
  }

  /** m / n, [out]. */
  private magnitudeFactor(): tf.Tensor1D {
    return tf.div(this.magnitude, this.weightNorm()) as tf.Tensor1D;
  }
}

/** The Euclidean norm of each column of a [in, out] kernel: W's row norms. */
function columnNorms(kernel: tf.Tensor2D): tf.Tensor1D {
  return tf.sqrt(tf.sum(tf.square(kernel), 0)) as tf.Tensor1D;
}
