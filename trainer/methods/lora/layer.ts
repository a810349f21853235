import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../../backend/linear.ts";
import type { ForwardContext, Linear, LinearWrapper } from "../../model/model.ts";
import type { Rng } from "../../random.ts";

/**
 * One LoRA module around a frozen linear module W:
 *   y = W x + s · B (A (dropout(x)))
 * A [r, in] starts kaiming-uniform U(-1/sqrt(in), 1/sqrt(in)) as in PEFT, B [out, r] starts at
 * zero, so the wrapped module starts out computing exactly W x.
 * A and B are stored transposed ([in, r] and [r, out]) so both products are plain 2-D matMuls;
 * PEFT's layouts are produced on export.
 */
export class LoraLayer implements LinearWrapper {
  /** Aᵀ, [in, r]. */
  readonly a: tf.Variable<tf.Rank.R2>;
  /** Bᵀ, [r, out]. */
  readonly b: tf.Variable<tf.Rank.R2>;

  constructor(
    readonly module: Linear,
    readonly r: number,
    readonly scale: number,
    readonly dropout: number,
    readonly rng: Rng,
  ) {
    const bound = 1 / Math.sqrt(module.inFeatures);
    const initialA = rng.fillUniform(new Float32Array(module.inFeatures * r), -bound, bound);
    this.a = trainable(tf.tensor2d(initialA, [module.inFeatures, r]));
    this.b = trainable(tf.zeros([r, module.outFeatures]));
  }

  forward(x: tf.Tensor, module: Linear, context: ForwardContext): tf.Tensor {
    const input = context.training && this.dropout > 0 ? this.applyDropout(x) : x;
    const update = linear(linear(input, this.a), this.b);
    return tf.add(module.base(x), tf.mul(update, this.scale));
  }

  variables(): tf.Variable[] {
    return [this.a, this.b];
  }

  /** The module's kernel with the update folded in: W' = W + s · B A (in kernel layout, [in, out]). */
  mergedKernel(): tf.Tensor2D {
    return tf.tidy(() => tf.add(this.module.kernel, tf.mul(tf.matMul(this.a, this.b), this.scale)));
  }

  dispose(): void {
    this.a.dispose();
    this.b.dispose();
  }

  /** Inverted dropout with a mask drawn from the seeded generator, so a resumed run draws the same masks. */
  protected applyDropout(x: tf.Tensor): tf.Tensor {
    const keep = 1 - this.dropout;
    const mask = new Float32Array(x.size);
    for (let i = 0; i < mask.length; i++) mask[i] = this.rng.nextFloat() < keep ? 1 / keep : 0;
    return tf.mul(x, tf.tensor(mask, x.shape));
  }
}

function trainable(initial: tf.Tensor2D): tf.Variable<tf.Rank.R2> {
  const variable = tf.variable(initial, true);
  initial.dispose();
  return variable;
}
