import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../../backend/linear.ts";
import type { ForwardContext, Linear, LinearWrapper } from "../../model/model.ts";
import type { Rng } from "../../random.ts";
import type { BottleneckConfig } from "./config.ts";

/**
 * One bottleneck adapter (Houlsby et al. 2019) on the output h of a sublayer's output projection:
 *   y = h + W_up act(W_down h + b_down) + b_up,   h = W x + bias (the frozen module)
 * W_down [k, hidden] starts kaiming-uniform U(-1/sqrt(hidden), 1/sqrt(hidden)) like LoRA's A,
 * W_up [hidden, k] and both biases start at zero, so the module starts out computing exactly h.
 * The weights are stored transposed ([hidden, k] and [k, hidden]) so both products are plain
 * 2-D matMuls; the export writes nn.Linear's layout.
 */
export class BottleneckLayer implements LinearWrapper {
  /** W_downᵀ, [hidden, k]. */
  readonly down: tf.Variable<tf.Rank.R2>;
  readonly downBias: tf.Variable<tf.Rank.R1>;
  /** W_upᵀ, [k, hidden]. */
  readonly up: tf.Variable<tf.Rank.R2>;
  readonly upBias: tf.Variable<tf.Rank.R1>;

  constructor(
    readonly module: Linear,
    readonly config: BottleneckConfig,
    rng: Rng,
  ) {
    const hidden = module.outFeatures;
    const k = config.bottleneckSize;
    const bound = 1 / Math.sqrt(hidden);
    this.down = owned(tf.tensor2d(rng.fillUniform(new Float32Array(hidden * k), -bound, bound), [hidden, k]));
    this.downBias = owned(tf.zeros([k]));
    this.up = owned(tf.zeros([k, hidden]));
    this.upBias = owned(tf.zeros([hidden]));
  }

  forward(x: tf.Tensor, module: Linear, _context: ForwardContext): tf.Tensor {
    const h = module.base(x);
    return tf.add(h, linear(this.activate(linear(h, this.down, this.downBias)), this.up, this.upBias));
  }

  variables(): tf.Variable[] {
    return [this.down, this.downBias, this.up, this.upBias];
  }

  dispose(): void {
    for (const variable of this.variables()) variable.dispose();
  }

  private activate(x: tf.Tensor): tf.Tensor {
    switch (this.config.activation) {
      case "relu":
        return tf.relu(x);
      case "tanh":
        return tf.tanh(x);
      case "silu":
        return tf.mul(x, tf.sigmoid(x));
      case "gelu":
        // The exact (erf) GELU, as torch.nn.GELU() and Hugging Face's "gelu".
        return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
    }
  }
}

function owned<R extends tf.Rank>(initial: tf.Tensor<R>): tf.Variable<R> {
  const variable = tf.variable(initial, true);
  initial.dispose();
  return variable;
}
