import * as tf from "@tensorflow/tfjs-core";
import { linear } from "../backend/linear.ts";
import { recomputeInBackward } from "../backend/recompute.ts";
import type { Rng } from "../random.ts";
import type { NamedTensor, TensorMap } from "../safetensors/safetensors.ts";
import type { ModelConfig } from "./config.ts";

/**
 * What every model in this folder offers the trainer and the PEFT methods: a forward pass to
 * logits, its linear modules by Hugging Face module path (the names PEFT adapters use), and its
 * weights as a Hugging Face state dict.
 */
export interface CausalLM {
  readonly config: ModelConfig;
  /** Every linear module by its Hugging Face path, e.g. "model.layers.0.self_attn.q_proj", in model order. */
  readonly linears: ReadonlyMap<string, Linear>;
  /** The output projection to the vocabulary ("lm_head"), which "all-linear" leaves out. */
  readonly outputHead: Linear;
  /** Token embeddings [batch, seq, hidden] for ids [batch, seq]; positions are added in forward. */
  embed(inputIds: tf.Tensor2D): tf.Tensor3D;
  /**
   * Logits [batch, seq, vocab] for the input positions (prefix positions give no logits): the
   * output head applied to the final hidden states, which skipOutputHead returns instead.
   */
  forward(inputs: ModelInputs): tf.Tensor3D;
  /**
   * Each layer's keys and values for `inputs`, exactly what its attention attends over (and what
   * a Hugging Face key/value cache holds): per key/value head, after the key norm and the rotary
   * embedding of their positions, any pastKeyValuesPrefix first. [batch, numKeyValueHeads,
   * prefix + seq, headDim] per layer; the caller disposes them. Passing them back as
   * pastKeyValuesPrefix makes a later pass read the input as if it followed these tokens.
   */
  keyValues(inputs: ModelInputs): KeyValuePrefix[];
  /** The weights under their Hugging Face names and layouts, as a model.safetensors would hold them. */
  stateDict(): TensorMap;
  /** Number of base-model parameters (a tied output head counts once). */
  parameterCount(): number;
  /**
   * The generator that the model's own dropout (config.json's attention, residual and embedding
   * dropout) draws its masks from in training. The trainer sets it to the run's checkpointed
   * generator, so a resumed run draws the same masks; training a model whose config has dropout
   * without one fails.
   */
  dropoutRng: Rng | undefined;
  /** Frees every tensor the model holds. */
  dispose(): void;
}

export interface ModelInputs {
  /** Token ids [batch, seq], int32. Give this or inputsEmbeds. */
  inputIds?: tf.Tensor2D;
  /** Input embeddings [batch, seq, hidden] instead of ids, e.g. with prompt-tuning tokens prepended. */
  inputsEmbeds?: tf.Tensor3D;
  /** [batch, seq]: 1 where a position may be attended to, 0 for padding. Prefix positions are always visible. */
  attentionMask?: tf.Tensor2D;
  /**
   * Per layer, keys and values placed before the input's own (prefix tuning). The input positions
   * then start after the prefix, as they do in Hugging Face with past_key_values.
   */
  pastKeyValuesPrefix?: readonly KeyValuePrefix[];
  /** Enables training-only behaviour: the model's dropout (see CausalLM.dropoutRng) and adapter dropout. */
  training?: boolean;
  /** Runs the base model alone, bypassing every linear wrapper (e.g. the DPO reference model). */
  disableAdapters?: boolean;
  /**
   * Return the final hidden states [batch, seq, hidden] (after the final norm) instead of logits,
   * leaving outputHead to the caller: the training loss applies it a few positions at a time so
   * that [positions, vocab] logits never exist at once.
   */
  skipOutputHead?: boolean;
  /**
   * Keep only each transformer block's input for the backward pass and run the block again
   * there (recomputeInBackward): less memory for a second forward pass.
   */
  gradientCheckpointing?: boolean;
}

/** Keys and values [batch or 1, numKeyValueHeads, prefixLength, headDim] for one layer. */
export interface KeyValuePrefix {
  key: tf.Tensor4D;
  value: tf.Tensor4D;
}

/** Passed to every linear module during one forward pass. */
export interface ForwardContext {
  training: boolean;
  disableAdapters: boolean;
}

/** What a PEFT method puts around a linear module to change its output (LoRA, DoRA, IA3, adapters). */
export interface LinearWrapper {
  forward(x: tf.Tensor, module: Linear, context: ForwardContext): tf.Tensor;
  /** The variables it adds: what gradients reach through a recomputed block or the chunked loss. */
  variables(): tf.Variable[];
  /** The generator it draws random numbers from (dropout masks), if any, for recomputation to replay. */
  readonly rng?: Rng;
}

/**
 * A frozen linear module. The kernel is stored [in, out] so the forward pass is a plain 2-D
 * matMul; `weightLayout` records how Hugging Face stores the weight: "linear" (nn.Linear,
 * [out, in]) or "conv1d" (GPT-2's Conv1D, [in, out]).
 */
export class Linear {
  /** Set by a PEFT method; undefined means the base module alone. */
  wrapper: LinearWrapper | undefined;

  constructor(
    readonly path: string,
    readonly kernel: tf.Variable<tf.Rank.R2>,
    readonly bias: tf.Variable<tf.Rank.R1> | undefined,
    readonly weightLayout: "linear" | "conv1d",
  ) {}

  get inFeatures(): number {
    return this.kernel.shape[0];
  }

  get outFeatures(): number {
    return this.kernel.shape[1];
  }

  /** The base module's output, ignoring any wrapper. */
  base(x: tf.Tensor): tf.Tensor {
    return linear(x, this.kernel, this.bias);
  }

  forward(x: tf.Tensor, context: ForwardContext): tf.Tensor {
    if (this.wrapper && !context.disableAdapters) return this.wrapper.forward(x, this, context);
    return this.base(x);
  }

  /** The variables of this module and its wrapper that are trained. */
  trainableVariables(): tf.Variable[] {
    const variables: tf.Variable[] = [this.kernel, ...(this.bias ? [this.bias] : []), ...(this.wrapper?.variables() ?? [])];
    return variables.filter((variable) => variable.trainable);
  }

  /** A kernel of this module ([in, out]) in the layout Hugging Face stores this module's weight in. */
  toHuggingFaceWeight(kernel: tf.Tensor2D = this.kernel): NamedTensor {
    const weight = this.weightLayout === "conv1d" ? kernel : tf.transpose(kernel);
    const out = { shape: [...weight.shape], data: Float32Array.from(weight.dataSync() as Float32Array) };
    if (weight !== kernel) weight.dispose();
    return out;
  }
}

/**
 * The frozen weights of a model, taken from a loaded state dict: each becomes a non-trainable
 * variable, and stateDict() gives them back under their Hugging Face names and layouts.
 */
export class FrozenWeights {
  private readonly owned: Array<{ name: string; variable: tf.Variable; transposed: boolean }> = [];
  private readonly derived: tf.Variable[] = [];

  /** `weights` are float32 tensors by Hugging Face name; each is consumed (disposed) when taken. */
  constructor(private readonly weights: Map<string, tf.Tensor>) {}

  /** A weight as a frozen variable, in the layout it has in the file. */
  take(name: string): tf.Variable {
    return this.own(name, this.consume(name), false);
  }

  /** An nn.Linear weight [out, in] as a frozen kernel [in, out]. */
  takeTransposed(name: string): tf.Variable<tf.Rank.R2> {
    const weight = this.consume(name);
    const kernel = tf.transpose(weight);
    weight.dispose();
    return this.own(name, kernel, true) as tf.Variable<tf.Rank.R2>;
  }

  /**
   * An output head tied to the embedding matrix [vocab, hidden]: its kernel is a transposed copy
   * (so the forward pass stays a plain matMul), freed with the rest and left out of stateDict().
   */
  tiedLinear(path: string, embedding: tf.Tensor): Linear {
    const transposed = tf.transpose(embedding);
    const kernel = tf.variable(transposed, false) as tf.Variable<tf.Rank.R2>;
    transposed.dispose();
    this.derived.push(kernel);
    return new Linear(path, kernel, undefined, "linear");
  }

  /** A Linear module whose weight (and bias, if present) come from `<path>.weight` and `<path>.bias`. */
  linear(path: string, layout: "linear" | "conv1d", hasBias: boolean): Linear {
    const kernel = layout === "linear" ? this.takeTransposed(`${path}.weight`) : (this.take(`${path}.weight`) as tf.Variable<tf.Rank.R2>);
    const bias = hasBias ? (this.take(`${path}.bias`) as tf.Variable<tf.Rank.R1>) : undefined;
    return new Linear(path, kernel, bias, layout);
  }

  stateDict(): TensorMap {
    const out: TensorMap = new Map();
    for (const { name, variable, transposed } of this.owned) {
      const value = transposed ? tf.transpose(variable) : variable;
      out.set(name, { shape: [...value.shape], data: Float32Array.from(value.dataSync() as Float32Array) });
      if (transposed) value.dispose();
    }
    return out;
  }

  parameterCount(): number {
    return this.owned.reduce((sum, { variable }) => sum + variable.size, 0);
  }

  /** The variables holding the weights, by Hugging Face name, in load order (a tied head's copy is not one). */
  variables(): Map<string, tf.Variable> {
    return new Map(this.owned.map(({ name, variable }) => [name, variable]));
  }

  dispose(): void {
    for (const { variable } of this.owned) variable.dispose();
    for (const variable of this.derived) variable.dispose();
  }

  private consume(name: string): tf.Tensor {
    const tensor = this.weights.get(name);
    if (!tensor) throw new Error(`model weights: "${name}" is missing (the loader checks this; is the weight list out of date?)`);
    this.weights.delete(name);
    return tensor;
  }

  private own(name: string, tensor: tf.Tensor, transposed: boolean): tf.Variable {
    // A variable shares the tensor's data; disposing the tensor leaves the variable its only owner.
    const variable = tf.variable(tensor, false);
    tensor.dispose();
    this.owned.push({ name, variable, transposed });
    return variable;
  }
}

/** Reads the forward options every linear module sees. */
export function forwardContext(inputs: ModelInputs): ForwardContext {
  return { training: inputs.training ?? false, disableAdapters: inputs.disableAdapters ?? false };
}

/** The input embeddings [batch, seq, hidden], from ids or given directly. */
export function inputEmbeddings(model: CausalLM, inputs: ModelInputs): tf.Tensor3D {
  if ((inputs.inputIds === undefined) === (inputs.inputsEmbeds === undefined)) {
    throw new Error("model forward: give exactly one of inputIds and inputsEmbeds");
  }
  if (inputs.inputsEmbeds) {
    const width = inputs.inputsEmbeds.shape[2];
    if (width !== model.config.hiddenSize) {
      throw new Error(`model forward: inputsEmbeds have width ${width}, the model's hidden size is ${model.config.hiddenSize}`);
    }
    return inputs.inputsEmbeds;
  }
  return model.embed(inputs.inputIds!);
}

/** The prefix length shared by every layer's prefix, after checking there is one per layer. */
export function prefixLength(prefix: readonly KeyValuePrefix[] | undefined, numLayers: number): number {
  if (!prefix) return 0;
  if (prefix.length !== numLayers) {
    throw new Error(`model forward: pastKeyValuesPrefix has ${prefix.length} entries, the model has ${numLayers} layers`);
  }
  return prefix[0]!.key.shape[2];
}

/** Puts a layer's prefix before its keys or values [batch, heads, seq, headDim] along the sequence axis. */
export function withPrefix(prefix: tf.Tensor4D | undefined, tensor: tf.Tensor4D): tf.Tensor4D {
  if (!prefix) return tensor;
  const batch = tensor.shape[0];
  const broadcast = prefix.shape[0] === batch ? prefix : tf.tile(prefix, [batch, 1, 1, 1]);
  return tf.concat([broadcast, tensor], 2);
}

/**
 * One transformer block, `block(h, prefix, constants)`, run under gradient checkpointing when the
 * inputs ask for it. `modules` are its linear modules and `variables` its other weights (norms):
 * gradients reach those that are trained through the recomputation, and the random generators
 * of the modules' wrappers and `generators` (the model's own dropout) are replayed. `constants` are the tensors from outside the block that
 * need no gradient (attention bias, rotary tables); block must read them from its argument,
 * which holds copies kept for the recomputation. A layer's prefix carries gradients (prefix
 * tuning), so it goes in as an input of the recomputation.
 */
export function transformerBlock<C extends tf.Tensor[]>(
  inputs: ModelInputs,
  weights: { modules: readonly Linear[]; variables: readonly tf.Variable[]; generators?: readonly Rng[] },
  h: tf.Tensor3D,
  prefix: KeyValuePrefix | undefined,
  constants: [...C],
  block: (h: tf.Tensor3D, prefix: KeyValuePrefix | undefined, constants: C) => tf.Tensor3D,
): tf.Tensor3D {
  if (!inputs.gradientCheckpointing) return block(h, prefix, constants as C);
  const { modules } = weights;
  const variables = [...weights.variables, ...modules.flatMap((module) => module.trainableVariables())];
  const generators = [...(weights.generators ?? []), ...modules.flatMap((module) => (module.wrapper?.rng ? [module.wrapper.rng] : []))];
  const blockInputs = prefix ? [h, prefix.key, prefix.value] : [h];
  return recomputeInBackward(
    (...tensors) => {
      const [x, key, value] = tensors.slice(0, blockInputs.length);
      const blockPrefix = key && value ? { key: key as tf.Tensor4D, value: value as tf.Tensor4D } : undefined;
      return block(x as tf.Tensor3D, blockPrefix, tensors.slice(blockInputs.length) as C);
    },
    blockInputs,
    { constants, variables, generators },
  );
}

/**
 * Inverted dropout as torch's nn.Dropout in training: each value is kept with probability
 * 1 - rate and then divided by it. The mask comes from `rng` (nextFloat() < 1 - rate keeps),
 * drawn in row-major order of `x`, so the same generator state gives the same mask: what
 * checkpoint resume and recomputation (transformerBlock) rely on. Returns x when not training or
 * rate is 0, drawing nothing.
 */
export function dropout(x: tf.Tensor, rate: number, training: boolean, rng: Rng | undefined, what: string): tf.Tensor {
  if (!training || rate === 0) return x;
  return tf.mul(x, dropoutMask(x.shape, rate, rng, what));
}

/** The scaled keep mask of `dropout` for a tensor of `shape`: 1 / (1 - rate) where kept, else 0. */
export function dropoutMask(shape: readonly number[], rate: number, rng: Rng | undefined, what: string): tf.Tensor {
  if (!rng) {
    throw new Error(`model forward: training with ${what} dropout ${rate} (config.json) needs a random generator; set the model's dropoutRng`);
  }
  const keep = 1 - rate;
  const mask = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < mask.length; i++) mask[i] = rng.nextFloat() < keep ? 1 / keep : 0;
  return tf.tensor(mask, [...shape]);
}

/**
 * What every model class shares: the frozen weights it was built from (which it owns and
 * disposes) and the registry of its linear modules by Hugging Face path.
 */
export abstract class FrozenWeightsModel {
  readonly linears = new Map<string, Linear>();
  dropoutRng: Rng | undefined;
  protected readonly weights: FrozenWeights;
  /** Where keyValues collects each layer's keys and values during its pass; undefined otherwise. */
  private keyValueSink: KeyValuePrefix[] | undefined;

  constructor(weights: Map<string, tf.Tensor>) {
    this.weights = new FrozenWeights(weights);
  }

  abstract readonly config: ModelConfig;
  abstract forward(inputs: ModelInputs): tf.Tensor3D;

  /**
   * CausalLM.keyValues: one forward pass (without the output head, dropout or recomputation)
   * during which every layer hands over the keys and values it attends over (attendedKeyValues),
   * so they are the model's own by construction, whatever its projections, norms and rotary.
   */
  keyValues(inputs: ModelInputs): KeyValuePrefix[] {
    const collected: KeyValuePrefix[] = [];
    this.keyValueSink = collected;
    try {
      this.forward({ ...inputs, training: false, gradientCheckpointing: false, skipOutputHead: true }).dispose();
    } catch (error) {
      for (const { key, value } of collected) tf.dispose([key, value]);
      throw error;
    } finally {
      this.keyValueSink = undefined;
    }
    if (collected.length !== this.config.numLayers) {
      throw new Error(`model keyValues: ${collected.length} layers handed over keys and values, the model has ${this.config.numLayers}`);
    }
    return collected;
  }

  /**
   * Called by each layer, in order, with the keys and values [batch, kvHeads, keys, headDim] it
   * passes to attention; kept (outside the pass's tidy) only while keyValues collects them.
   */
  protected attendedKeyValues(key: tf.Tensor4D, value: tf.Tensor4D): void {
    this.keyValueSink?.push({ key: tf.keep(key.clone()), value: tf.keep(value.clone()) });
  }

  stateDict(): TensorMap {
    return this.weights.stateDict();
  }

  parameterCount(): number {
    return this.weights.parameterCount();
  }

  /**
   * The variables the model computes with, by the Hugging Face name of the weight each holds
   * (an nn.Linear weight as its [in, out] kernel): what full fine-tuning makes trainable.
   */
  weightVariables(): Map<string, tf.Variable> {
    return this.weights.variables();
  }

  dispose(): void {
    this.weights.dispose();
  }

  protected register(module: Linear): Linear {
    this.linears.set(module.path, module);
    return module;
  }
}
