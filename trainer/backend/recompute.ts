import * as tf from "@tensorflow/tfjs-core";
import type { Rng } from "../random.ts";

/**
 * Activation recomputation ("gradient checkpointing"): y = f(...inputs, ...constants), computed
 * so that the backward pass keeps only its inputs, not the tensors f makes on the way; the
 * backward pass runs f again to get them back, then differentiates it.
 *
 * Why: tfjs keeps every tensor an op saves for its gradient, and every intermediate gradient,
 * until the whole backward pass ends. Run block by block, a model holds one block's worth of
 * them at a time instead of all blocks' at once, for the price of a second forward pass.
 *
 * Gradients reach each of `inputs` and each of `variables` (those f reads that may be trained;
 * the frozen ones are left out). `constants` are tensors f reads that need no gradient (an
 * attention mask); the second run gets copies kept for it, because the originals are usually
 * freed when the forward pass ends. f must read no other tensor but variables: a tensor that
 * carries a gradient (a prefix computed from trainable variables, say) must be one of `inputs`.
 *
 * `generators` are the random generators f draws from (dropout masks): the second run is
 * started from the same state, so it draws the same numbers, and then they are put back where
 * the first run left them, so the rest of training draws exactly what it would have without
 * recomputation.
 */
export function recomputeInBackward<T extends tf.Tensor>(
  f: (...tensors: tf.Tensor[]) => T,
  inputs: readonly tf.Tensor[],
  options: { constants?: readonly tf.Tensor[]; variables?: readonly tf.Variable[]; generators?: readonly Rng[] } = {},
): T {
  const constants = options.constants ?? [];
  const variables = [...new Set(options.variables ?? [])].filter((variable) => variable.trainable);
  const uniqueGenerators = [...new Set(options.generators ?? [])];
  const drawnFrom = uniqueGenerators.map((generator) => generator.state());
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args.at(-1) as tf.GradSaveFunc;
    const given = args.slice(0, inputs.length) as tf.Tensor[];
    // Saved tensors are kept until the backward pass ends, and only while a tape records.
    save([...given, ...constants]);
    return {
      value: f(...given, ...constants),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        drawingAgain(uniqueGenerators, drawnFrom, () =>
          tf.tidy(() => {
            const savedInputs = saved.slice(0, inputs.length);
            const xs = [...savedInputs, ...variables];
            const { value, gradients } = valueAndGradients(() => f(...saved), xs, dy as T);
            value.dispose();
            return gradients.map((gradient, i) => gradient ?? tf.zerosLike(xs[i]!));
          }),
        ),
    };
  }) as (...tensors: tf.Tensor[]) => T;
  return op(...inputs, ...variables);
}

/**
 * Runs `f` with each generator set back to its state in `states` (as generator.state() gave it),
 * so that f draws the same numbers as a run from there did, then puts each generator back where
 * it was.
 */
function drawingAgain<T>(generators: readonly Rng[], states: ReadonlyArray<readonly number[]>, f: () => T): T {
  const resumeAt = generators.map((generator) => generator.state());
  generators.forEach((generator, i) => generator.setState(states[i]!));
  try {
    return f();
  } finally {
    generators.forEach((generator, i) => generator.setState(resumeAt[i]!));
  }
}

/**
 * f() and d(f · dy)/dxs (null for an x that f does not depend on), on a tape of their own: usable
 * inside a custom gradient function and while an outer tape records, which keeps no trace of it.
 *
 * Why not tf.grads: tfjs has one tape. Inside a gradient function (which runs while tfjs walks
 * the outer tape) a nested tf.grads replaces that tape with its own and clears it when done, so
 * the outer walk then fails while cleaning up; while an outer tape records, a nested tf.grads
 * adds its ops to the outer tape, which keeps everything they saved until the outer backward
 * pass ends. So the outer tape is set aside (withoutTape), and the nested tape, with all it
 * saved, is freed as soon as it is done.
 */
export function valueAndGradients<T extends tf.Tensor>(f: () => T, xs: tf.Tensor[], dy?: T): { value: T; gradients: Array<tf.Tensor | null> } {
  return withoutTape(() => {
    const { value, grads } = tf.engine().gradients(f, xs, dy, true);
    return { value, gradients: grads as Array<tf.Tensor | null> };
  });
}

/** Runs f with the gradient tape set aside: the outer tape records none of f's ops. */
export function withoutTape<T>(f: () => T): T {
  const { state } = tf.engine();
  const [outerTape, outerDepth] = [state.activeTape, state.gradientDepth];
  state.gradientDepth = 0;
  try {
    return f();
  } finally {
    state.activeTape = outerTape;
    state.gradientDepth = outerDepth;
  }
}

/** Whether a gradient tape is recording the ops run now (inside tf.grads or tf.variableGrads). */
export function recordingGradients(): boolean {
  const { state } = tf.engine();
  return state.gradientDepth > 0 && state.kernelDepth === 0;
}
