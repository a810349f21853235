import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, Linear, ModelInputs } from "../../model/model.ts";
import type { TensorMap } from "../../safetensors/safetensors.ts";
import { MethodOptionsError, type Adapter, type InjectContext, type PeftMethod } from "../method.ts";
import { resolveIa3Config, type Ia3Config } from "./config.ts";
import { Ia3Layer } from "./layer.ts";

/** IA3 in Hugging Face PEFT's format (peft_type IA3). */
export const ia3Method: PeftMethod = {
  type: "ia3",
  inject(model: CausalLM, options: unknown, context: InjectContext): Ia3Adapter {
    const path = context.optionsPath ?? "spec.method";
    const config = resolveIa3Config(options, model.config, path);
    const layers = new Map<string, Ia3Layer>();
    for (const module of selectIa3Targets(model, config, path)) layers.set(module.path, new Ia3Layer(module, isFeedforward(module.path, config)));
    for (const layer of layers.values()) layer.module.wrapper = layer;
    return new Ia3Adapter(model, config, layers, context);
  },
};

/** A target matches a module whose path equals it or ends with "." + target, as PEFT matches target_modules. */
function matchesTarget(path: string, target: string): boolean {
  return path === target || path.endsWith(`.${target}`);
}

/** PEFT's own test (IA3Model._check_target_module_feedforward): the path ends with the name. */
function isFeedforward(path: string, config: Ia3Config): boolean {
  return config.feedforwardModules.some((name) => path.endsWith(name));
}

/**
 * The modules IA3 wraps, in model order. Every target must match a module (a typo would
 * otherwise train nothing there); the output head is never one, as in PEFT's defaults.
 */
export function selectIa3Targets(model: Pick<CausalLM, "linears" | "outputHead" | "config">, config: Ia3Config, path = "spec.method"): Linear[] {
  const modules = [...model.linears.values()].filter((module) => module !== model.outputHead);
  for (const target of config.targetModules) {
    if (!modules.some((module) => matchesTarget(module.path, target))) {
      const names = [...new Set(modules.map((module) => module.path.replace(/^.*\.(?:layers|h)\.\d+\./, "")))].join(", ");
      throw new MethodOptionsError(`${path}.targetModules`, `"${target}" matches no linear module of ${model.config.architecture}; its modules are ${names}`);
    }
  }
  const selected = modules.filter((module) => config.targetModules.some((target) => matchesTarget(module.path, target)));
  for (const module of selected) {
    if (module.wrapper) throw new MethodOptionsError(path, `module "${module.path}" already has an adapter; inject one method at a time`);
  }
  return selected;
}

export class Ia3Adapter implements Adapter {
  readonly type = "ia3";

  constructor(
    readonly model: CausalLM,
    readonly config: Ia3Config,
    /** IA3 layers by module path, in model order. */
    readonly layers: ReadonlyMap<string, Ia3Layer>,
    private readonly context: InjectContext,
  ) {}

  forward(inputs: ModelInputs): tf.Tensor3D {
    return this.model.forward(inputs);
  }

  trainableVariables(): Map<string, tf.Variable> {
    return new Map([...this.layers].map(([path, layer]) => [`${path}.ia3_l`, layer.vector]));
  }

  trainableParameterCount(): number {
    let count = 0;
    for (const layer of this.layers.values()) count += layer.vector.size;
    return count;
  }

  /** `base_model.model.<module>.ia3_l`, [out, 1] or [1, in] for feed-forward modules, as PEFT saves it. */
  exportTensors(): TensorMap {
    const tensors: TensorMap = new Map();
    for (const [path, layer] of this.layers) {
      tensors.set(`base_model.model.${path}.ia3_l`, { shape: layer.peftShape(), data: Float32Array.from(layer.vector.dataSync() as Float32Array) });
    }
    return tensors;
  }

  adapterConfig(): Record<string, unknown> {
    const layers = [...this.layers.values()];
    // The keys IA3Config has had since PEFT 0.6, so that older and newer PEFT both load it; sorted as PEFT writes.
    return {
      auto_mapping: null,
      base_model_name_or_path: this.context.baseModelNameOrPath,
      // PEFT turns this on itself for GPT-2's Conv1D modules, whose weights are [in, out].
      fan_in_fan_out: layers.some((layer) => layer.module.weightLayout === "conv1d"),
      // Only those that matter: the feed-forward names that match a target.
      feedforward_modules: this.config.feedforwardModules.filter((name) => layers.some((layer) => layer.feedforward && layer.module.path.endsWith(name))),
      inference_mode: true,
      init_ia3_weights: true,
      modules_to_save: null,
      peft_type: "IA3",
      revision: null,
      target_modules: this.config.targetModules,
      task_type: this.context.taskType ?? "CAUSAL_LM",
    };
  }

  /** The base state dict with l folded into each target's weight (and an attention-side module's bias), as PEFT's merge. */
  merge(): TensorMap {
    const stateDict = this.model.stateDict();
    for (const [path, layer] of this.layers) {
      const kernel = layer.mergedKernel();
      stateDict.set(`${path}.weight`, layer.module.toHuggingFaceWeight(kernel));
      kernel.dispose();
      const bias = layer.mergedBias();
      if (bias) {
        stateDict.set(`${path}.bias`, { shape: [...bias.shape], data: Float32Array.from(bias.dataSync() as Float32Array) });
        bias.dispose();
      }
    }
    return stateDict;
  }

  saveState(): TensorMap {
    const state: TensorMap = new Map();
    for (const [name, variable] of this.trainableVariables()) {
      state.set(name, { shape: [...variable.shape], data: Float32Array.from(variable.dataSync() as Float32Array) });
    }
    return state;
  }

  loadState(state: TensorMap): void {
    const variables = this.trainableVariables();
    const unexpected = [...state.keys()].filter((name) => !variables.has(name));
    if (unexpected.length > 0) throw new Error(`IA3 state: unexpected tensors ${unexpected.join(", ")}; was it saved with other target modules?`);
    for (const [name, variable] of variables) {
      const saved = state.get(name);
      if (!saved) throw new Error(`IA3 state: missing tensor "${name}"`);
      if (saved.data.length !== variable.size) throw new Error(`IA3 state: tensor "${name}" has ${saved.data.length} values, expected ${variable.size}`);
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
 * A PEFT IA3 adapter_model.safetensors as the adapter's own state: `base_model.model.<module>.ia3_l`
 * ([out, 1] or [1, in]) becomes `<module>.ia3_l` [n].
 */
export function ia3StateFromPeftTensors(tensors: TensorMap, file: string): TensorMap {
  const state: TensorMap = new Map();
  for (const [name, tensor] of tensors) {
    const match = /^base_model\.model\.(.+)\.ia3_l$/.exec(name);
    if (!match || tensor.shape.length !== 2 || Math.min(...tensor.shape) !== 1) throw new Error(`${file}: unexpected tensor "${name}" [${tensor.shape.join(", ")}] in an IA3 adapter`);
    state.set(`${match[1]}.ia3_l`, { shape: [tensor.data.length], data: Float32Array.from(tensor.data) });
  }
  return state;
}
