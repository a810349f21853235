import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, Linear, ModelInputs } from "../../model/model.ts";
import { Rng } from "../../random.ts";
import type { NamedTensor, TensorMap } from "../../safetensors/safetensors.ts";
import { MethodOptionsError, type Adapter, type InjectContext, type PeftMethod } from "../method.ts";
import { adaptedOutputs, resolveBottleneckConfig, type BottleneckConfig } from "./config.ts";
import { BottleneckLayer } from "./layer.ts";

/**
 * Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020). PEFT has no such method, so
 * the export is kubetune's own, documented in docs/adapters.md: adapter_config.json with
 * peft_type BOTTLENECK_ADAPTER (which PEFT refuses by name rather than misreading) and
 * adapter_model.safetensors with one nn.Linear-layout down and up projection per adapted module.
 * loadBottleneckAdapter reads it back onto a base model.
 */
export const BOTTLENECK_PEFT_TYPE = "BOTTLENECK_ADAPTER";
export const BOTTLENECK_FORMAT = "kubetune-bottleneck-adapter/v1";

export const bottleneckMethod: PeftMethod = {
  type: "adapter",
  inject(model: CausalLM, options: unknown, context: InjectContext): BottleneckAdapter {
    const path = context.optionsPath ?? "spec.method";
    const config = resolveBottleneckConfig(options, path);
    const layers = new Map<string, BottleneckLayer>();
    for (const module of bottleneckTargets(model, config, path)) layers.set(module.path, new BottleneckLayer(module, config, context.rng));
    for (const layer of layers.values()) layer.module.wrapper = layer;
    return new BottleneckAdapter(model, config, layers, context);
  },
};

/** The output projections the variant follows, in model order; a model with none cannot take the method. */
export function bottleneckTargets(model: Pick<CausalLM, "linears" | "config">, config: BottleneckConfig, path = "spec.method"): Linear[] {
  const suffixes = adaptedOutputs(config.variant);
  const selected = [...model.linears.values()].filter((module) => suffixes.some((suffix) => module.path.endsWith(`.${suffix}`)));
  if (selected.length === 0) {
    throw new MethodOptionsError(
      `${path}.variant`,
      `${model.config.architecture} has no module named ${suffixes.join(" or ")} to place a ${config.variant} adapter after; bottleneck adapters support the Llama family and GPT-2`,
    );
  }
  for (const module of selected) {
    if (module.wrapper) throw new MethodOptionsError(path, `module "${module.path}" already has an adapter; inject one method at a time`);
  }
  return selected;
}

export class BottleneckAdapter implements Adapter {
  readonly type = "adapter";

  constructor(
    readonly model: CausalLM,
    readonly config: BottleneckConfig,
    /** Adapters by the path of the module whose output they follow, in model order. */
    readonly layers: ReadonlyMap<string, BottleneckLayer>,
    private readonly context: InjectContext,
  ) {}

  forward(inputs: ModelInputs): tf.Tensor3D {
    return this.model.forward(inputs);
  }

  trainableVariables(): Map<string, tf.Variable> {
    const variables = new Map<string, tf.Variable>();
    for (const [path, layer] of this.layers) {
      variables.set(`${path}.adapter_down.weight`, layer.down);
      variables.set(`${path}.adapter_down.bias`, layer.downBias);
      variables.set(`${path}.adapter_up.weight`, layer.up);
      variables.set(`${path}.adapter_up.bias`, layer.upBias);
    }
    return variables;
  }

  trainableParameterCount(): number {
    let count = 0;
    for (const variable of this.trainableVariables().values()) count += variable.size;
    return count;
  }

  /**
   * `base_model.model.<module>.adapter_down.weight` [k, hidden], `.adapter_down.bias` [k],
   * `.adapter_up.weight` [hidden, k], `.adapter_up.bias` [hidden]: nn.Linear's layouts, so that
   * y = h + up(act(down(h))) in PyTorch with these tensors as they are.
   */
  exportTensors(): TensorMap {
    const tensors: TensorMap = new Map();
    for (const [name, variable] of this.trainableVariables()) {
      tensors.set(`base_model.model.${name}`, name.endsWith(".weight") ? transposedValues(variable as tf.Variable<tf.Rank.R2>) : values(variable));
    }
    return tensors;
  }

  adapterConfig(): Record<string, unknown> {
    const suffixes = adaptedOutputs(this.config.variant);
    return {
      activation: this.config.activation,
      base_model_name_or_path: this.context.baseModelNameOrPath,
      bottleneck_size: this.config.bottleneckSize,
      format: BOTTLENECK_FORMAT,
      inference_mode: true,
      peft_type: BOTTLENECK_PEFT_TYPE,
      target_modules: suffixes.filter((suffix) => [...this.layers.keys()].some((path) => path.endsWith(`.${suffix}`))),
      task_type: this.context.taskType ?? "CAUSAL_LM",
      variant: this.config.variant,
    };
  }

  /** A bottleneck's nonlinearity sits between its two projections: no weight of the base model can absorb it. */
  merge(): TensorMap {
    throw new Error("bottleneck adapters cannot be merged into the base weights (their nonlinearity is not linear); load them with loadBottleneckAdapter");
  }

  saveState(): TensorMap {
    const state: TensorMap = new Map();
    for (const [name, variable] of this.trainableVariables()) state.set(name, values(variable));
    return state;
  }

  loadState(state: TensorMap): void {
    const variables = this.trainableVariables();
    const unexpected = [...state.keys()].filter((name) => !variables.has(name));
    if (unexpected.length > 0) throw new Error(`adapter state: unexpected tensors ${unexpected.join(", ")}; was it saved with another variant or model?`);
    for (const [name, variable] of variables) {
      const saved = state.get(name);
      if (!saved) throw new Error(`adapter state: missing tensor "${name}"`);
      if (saved.shape.length !== variable.shape.length || saved.shape.some((dim, i) => dim !== variable.shape[i])) {
        throw new Error(`adapter state: tensor "${name}" has shape [${saved.shape.join(", ")}], expected [${variable.shape.join(", ")}]`);
      }
    }
    for (const [name, variable] of variables) tf.tidy(() => variable.assign(tf.tensor(state.get(name)!.data, variable.shape)));
  }

  remove(): void {
    for (const layer of this.layers.values()) {
      if (layer.module.wrapper === layer) layer.module.wrapper = undefined;
      layer.dispose();
    }
  }
}

/**
 * Puts an exported bottleneck adapter (its adapter_config.json object and the tensors of its
 * adapter_model.safetensors) onto `model`: the loader for a later job or tool. `file` names the
 * folder in errors. Every tensor must be there with its shape; nothing else may be.
 */
export function loadBottleneckAdapter(model: CausalLM, adapterConfig: Record<string, unknown>, tensors: TensorMap, file: string): BottleneckAdapter {
  if (adapterConfig.peft_type !== BOTTLENECK_PEFT_TYPE) {
    throw new Error(`${file}/adapter_config.json: peft_type is ${JSON.stringify(adapterConfig.peft_type)}, not ${BOTTLENECK_PEFT_TYPE}`);
  }
  const options = { variant: adapterConfig.variant, bottleneckSize: adapterConfig.bottleneck_size, activation: adapterConfig.activation };
  const adapter = bottleneckMethod.inject(model, options, {
    // The initial values are overwritten by the saved ones below.
    rng: Rng.fromSeed(0),
    baseModelNameOrPath: String(adapterConfig.base_model_name_or_path ?? ""),
    optionsPath: `${file}/adapter_config.json`,
  }) as BottleneckAdapter;
  try {
    const state: TensorMap = new Map();
    for (const [name, tensor] of tensors) {
      const match = /^base_model\.model\.(.+\.adapter_(?:down|up)\.(weight|bias))$/.exec(name);
      if (!match) throw new Error(`${file}/adapter_model.safetensors: unexpected tensor "${name}"`);
      state.set(match[1]!, match[2] === "weight" ? transposed(tensor) : tensor);
    }
    adapter.loadState(state);
    return adapter;
  } catch (error) {
    adapter.remove();
    throw error;
  }
}

function values(variable: tf.Tensor): NamedTensor {
  return { shape: [...variable.shape], data: Float32Array.from(variable.dataSync() as Float32Array) };
}

function transposedValues(kernel: tf.Tensor2D): NamedTensor {
  const weight = tf.transpose(kernel);
  const out = values(weight);
  weight.dispose();
  return out;
}

function transposed(tensor: NamedTensor): NamedTensor {
  if (tensor.shape.length !== 2) throw new Error(`expected a matrix, got shape [${tensor.shape.join(", ")}]`);
  const [rows, columns] = tensor.shape as [number, number];
  const data = new Float32Array(rows * columns);
  for (let row = 0; row < rows; row++) for (let column = 0; column < columns; column++) data[column * rows + row] = tensor.data[row * columns + column]!;
  return { shape: [columns, rows], data };
}
