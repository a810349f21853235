import * as tf from "@tensorflow/tfjs-core";
import type { CausalLM, Linear, ModelInputs } from "../../model/model.ts";
import type { TensorMap } from "../../safetensors/safetensors.ts";
import { MethodOptionsError, type Adapter, type InjectContext, type PeftMethod } from "../method.ts";
import { loraScale, resolveLoraConfig, type LoraConfig } from "./config.ts";
import { LoraLayer } from "./layer.ts";

/** LoRA (Hu et al. 2021) and rsLoRA, in Hugging Face PEFT's format. */
export const loraMethod: PeftMethod = {
  type: "lora",
  inject(model: CausalLM, options: unknown, context: InjectContext): LoraAdapter {
    const path = context.optionsPath ?? "spec.method";
    const config = resolveLoraConfig(options, model.config, path);
    const targets = selectTargets(model, config, path);
    const layers = new Map<string, LoraLayer>();
    for (const module of targets) {
      layers.set(module.path, new LoraLayer(module, config.r, loraScale(config), config.dropout, context.rng));
    }
    // Wrap only once every layer exists, so a failure above leaves the model untouched.
    for (const layer of layers.values()) layer.module.wrapper = layer;
    return new LoraAdapter(model, config, layers, context);
  },
};

/**
 * The linear modules LoRA wraps, in model order. A target matches a module whose path equals it
 * or ends with "." + target, as PEFT matches target_modules; "all-linear" is every linear module
 * but the output head.
 */
export function selectTargets(model: CausalLM, config: LoraConfig, path = "spec.method"): Linear[] {
  const modules = [...model.linears.values()];
  const targets = config.targetModules;
  if (targets === "all-linear") return modules.filter((module) => module !== model.outputHead);
  const matches = (module: Linear, target: string) => module.path === target || module.path.endsWith(`.${target}`);
  for (const target of targets) {
    if (!modules.some((module) => matches(module, target))) {
      const names = [...new Set(modules.map((module) => lastSegment(module.path)))].join(", ");
      throw new MethodOptionsError(
        `${path}.targetModules`,
        `"${target}" matches no linear module of ${model.config.architecture}; its linear modules are ${names}`,
      );
    }
  }
  const selected = modules.filter((module) => targets.some((target) => matches(module, target)));
  for (const module of selected) {
    if (module.wrapper) throw new MethodOptionsError(path, `module "${module.path}" already has an adapter; inject one method at a time`);
    if (module === model.outputHead && model.config.tieWordEmbeddings) {
      throw new MethodOptionsError(
        `${path}.targetModules`,
        `"${module.path}" shares its weight with the input embeddings (tie_word_embeddings), so LoRA cannot adapt it; leave it out`,
      );
    }
  }
  return selected;
}

export class LoraAdapter implements Adapter {
  readonly type: string = "lora";

  constructor(
    readonly model: CausalLM,
    readonly config: LoraConfig,
    /** LoRA layers by module path, in model order. */
    readonly layers: ReadonlyMap<string, LoraLayer>,
    private readonly context: InjectContext,
  ) {}

  forward(inputs: ModelInputs): tf.Tensor3D {
    return this.model.forward(inputs);
  }

  trainableVariables(): Map<string, tf.Variable> {
    const variables = new Map<string, tf.Variable>();
    for (const [path, layer] of this.layers) {
      variables.set(`${path}.lora_A`, layer.a);
      variables.set(`${path}.lora_B`, layer.b);
    }
    return variables;
  }

  trainableParameterCount(): number {
    let count = 0;
    for (const variable of this.trainableVariables().values()) count += variable.size;
    return count;
  }

  /** `base_model.model.<module path>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r], as PEFT saves them. */
  exportTensors(): TensorMap {
    const tensors: TensorMap = new Map();
    for (const [path, layer] of this.layers) {
      tensors.set(`base_model.model.${path}.lora_A.weight`, transposedValues(layer.a));
      tensors.set(`base_model.model.${path}.lora_B.weight`, transposedValues(layer.b));
    }
    return tensors;
  }

  adapterConfig(): Record<string, unknown> {
    const { config } = this;
    const targetModules =
      config.targetModules === "all-linear"
        ? [...new Set([...this.layers.keys()].map(lastSegment))].sort()
        : config.targetModules;
    // Every key PEFT's LoraConfig has had since 0.9, so older and newer PEFT both load it; sorted as PEFT writes.
    return {
      alpha_pattern: {},
      auto_mapping: null,
      base_model_name_or_path: this.context.baseModelNameOrPath,
      bias: "none",
      // PEFT turns this on itself for GPT-2's Conv1D modules, whose weights are [in, out].
      fan_in_fan_out: [...this.layers.values()].some((layer) => layer.module.weightLayout === "conv1d"),
      inference_mode: true,
      init_lora_weights: true,
      layers_pattern: null,
      layers_to_transform: null,
      loftq_config: {},
      lora_alpha: config.alpha,
      lora_dropout: config.dropout,
      megatron_config: null,
      megatron_core: "megatron.core",
      modules_to_save: null,
      peft_type: "LORA",
      r: config.r,
      rank_pattern: {},
      revision: null,
      target_modules: targetModules,
      task_type: this.context.taskType ?? "CAUSAL_LM",
      use_dora: false,
      use_rslora: config.rsLora,
    };
  }

  merge(): TensorMap {
    const stateDict = this.model.stateDict();
    for (const [path, layer] of this.layers) {
      const merged = layer.mergedKernel();
      stateDict.set(`${path}.weight`, layer.module.toHuggingFaceWeight(merged));
      merged.dispose();
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
    if (unexpected.length > 0) throw new Error(`LoRA state: unexpected tensors ${unexpected.join(", ")}; was it saved with other target modules?`);
    for (const [name, variable] of variables) {
      const saved = state.get(name);
      if (!saved) throw new Error(`LoRA state: missing tensor "${name}"`);
      if (saved.shape.length !== variable.shape.length || saved.shape.some((dim, i) => dim !== variable.shape[i])) {
        throw new Error(`LoRA state: tensor "${name}" has shape [${saved.shape.join(", ")}], expected [${variable.shape.join(", ")}]`);
      }
    }
    for (const [name, variable] of variables) {
      tf.tidy(() => variable.assign(tf.tensor(state.get(name)!.data, variable.shape)));
    }
  }

  remove(): void {
    for (const layer of this.layers.values()) {
      if (layer.module.wrapper === layer) layer.module.wrapper = undefined;
      layer.dispose();
    }
  }
}

function transposedValues(kernel: tf.Tensor2D): { shape: number[]; data: Float32Array } {
  return tf.tidy(() => {
    const weight = tf.transpose(kernel);
    return { shape: [...weight.shape], data: Float32Array.from(weight.dataSync() as Float32Array) };
  });
}

function lastSegment(path: string): string {
  return path.slice(path.lastIndexOf(".") + 1);
}
