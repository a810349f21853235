import * as tf from "@tensorflow/tfjs-core";
import type { Rng } from "../../random.ts";
import type { TensorMap } from "../../safetensors/safetensors.ts";
import { MethodOptionsError } from "../method.ts";

/**
 * What the prompt-learning methods (prompt tuning, prefix tuning, SK-tuning) share, as PEFT's
 * PromptLearningConfig and BasePromptEncoder do: a table of virtual-token values computed from
 * a few trainable variables, saved to PEFT as one `prompt_embeddings` tensor.
 */
export interface VirtualTokenTable {
  /** Rows of the table: virtual tokens. */
  readonly tokens: number;
  /** Trainable variables by stable name (checkpoint names), in a fixed order. */
  readonly variables: ReadonlyMap<string, tf.Variable>;
  /**
   * The table [tokens, width], differentiable in the variables: prompt tuning's input
   * embeddings, or prefix tuning's keys and values of every layer in PEFT's layout.
   */
  compute(): tf.Tensor2D;
  /** Frees the variables and any frozen tensor the table holds. */
  dispose(): void;
}

/** A trainable variable holding `values` [rows, cols]; the initial tensor is freed. */
export function trainableMatrix(values: Float32Array, rows: number, cols: number): tf.Variable<tf.Rank.R2> {
  const initial = tf.tensor2d(values, [rows, cols]);
  const variable = tf.variable(initial, true);
  initial.dispose();
  return variable;
}

/** A table that is one trainable variable: PEFT's nn.Embedding(tokens, width), initialised by the caller. */
export class EmbeddingTable implements VirtualTokenTable {
  readonly variables: ReadonlyMap<string, tf.Variable>;
  private readonly weight: tf.Variable<tf.Rank.R2>;

  constructor(name: string, initial: Float32Array, tokens: number, width: number) {
    this.weight = trainableMatrix(initial, tokens, width);
    this.variables = new Map([[name, this.weight]]);
  }

  get tokens(): number {
    return this.weight.shape[0];
  }

  compute(): tf.Tensor2D {
    // A copy: callers own what compute() returns (and may dispose it); the variable stays.
    return tf.clone(this.weight);
  }

  dispose(): void {
    this.weight.dispose();
  }
}

/** Standard normal values, as torch.nn.Embedding initialises its weight (PEFT's RANDOM init). */
export function normalValues(count: number, rng: Rng): Float32Array {
  const out = new Float32Array(count);
  for (let i = 0; i < out.length; i++) out[i] = rng.normal();
  return out;
}

/** The table's current values, as PEFT's `prompt_embeddings` [tokens, width]. */
export function promptEmbeddingsTensor(table: VirtualTokenTable): TensorMap {
  const values = table.compute();
  const tensor = { shape: [...values.shape], data: Float32Array.from(values.dataSync() as Float32Array) };
  values.dispose();
  return new Map([["prompt_embeddings", tensor]]);
}

/** The variables' exact float32 values by name, for checkpoints. */
export function saveVariables(variables: ReadonlyMap<string, tf.Variable>): TensorMap {
  const state: TensorMap = new Map();
  for (const [name, variable] of variables) {
    state.set(name, { shape: [...variable.shape], data: Float32Array.from(variable.dataSync() as Float32Array) });
  }
  return state;
}

/** Restores saveVariables()'s output; every name and shape must match, else nothing changes. */
export function loadVariables(method: string, variables: ReadonlyMap<string, tf.Variable>, state: TensorMap): void {
  const unexpected = [...state.keys()].filter((name) => !variables.has(name));
  if (unexpected.length > 0) throw new Error(`${method} state: unexpected tensors ${unexpected.join(", ")}; was it saved with other method options?`);
  for (const [name, variable] of variables) {
    const saved = state.get(name);
    if (!saved) throw new Error(`${method} state: missing tensor "${name}"`);
    if (saved.shape.length !== variable.shape.length || saved.shape.some((dim, i) => dim !== variable.shape[i])) {
      throw new Error(`${method} state: tensor "${name}" has shape [${saved.shape.join(", ")}], expected [${variable.shape.join(", ")}]`);
    }
  }
  for (const [name, variable] of variables) {
    tf.tidy(() => variable.assign(tf.tensor(state.get(name)!.data, variable.shape)));
  }
}

/** The options object of a method block (absent means every default); errors name `path`. */
export function optionsObject(options: unknown, path: string, method: string): Record<string, unknown> {
  const raw = options ?? {};
  if (typeof raw !== "object" || Array.isArray(raw)) throw new MethodOptionsError(path, `${method} options must be an object`);
  return raw as Record<string, unknown>;
}

/** PEFT's num_virtual_tokens: a positive integer (the API caps it at 512). */
export function checkVirtualTokens(value: unknown, path: string): number {
  if (!Number.isSafeInteger(value) || (value as number) <= 0 || (value as number) > 512) {
    throw new MethodOptionsError(`${path}.numVirtualTokens`, `must be an integer from 1 to 512, got ${JSON.stringify(value)}`);
  }
  return value as number;
}

export function checkBoolean(value: unknown, path: string): boolean {
  if (typeof value !== "boolean") throw new MethodOptionsError(path, `must be true or false, got ${JSON.stringify(value)}`);
  return value;
}
