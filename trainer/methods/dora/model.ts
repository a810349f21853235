import type * as tf from "@tensorflow/tfjs-core";
import type { CausalLM } from "../../model/model.ts";
import type { TensorMap } from "../../safetensors/safetensors.ts";
import type { InjectContext, PeftMethod } from "../method.ts";
import { loraScale, resolveLoraConfig } from "../lora/config.ts";
import { LoraAdapter, selectTargets } from "../lora/model.ts";
import { DoraLayer } from "./layer.ts";

/**
 * DoRA in Hugging Face PEFT's format: a LoRA adapter (PEFT's peft_type LORA with use_dora: true)
 * whose modules also train a magnitude vector. Options, defaults, targets and A/B are LoRA's.
 */
export const doraMethod: PeftMethod = {
  type: "dora",
  inject(model: CausalLM, options: unknown, context: InjectContext): DoraAdapter {
    const path = context.optionsPath ?? "spec.method";
    const config = resolveLoraConfig(options, model.config, path);
    const targets = selectTargets(model, config, path);
    const layers = new Map<string, DoraLayer>();
    try {
      for (const module of targets) layers.set(module.path, new DoraLayer(module, config.r, loraScale(config), config.dropout, context.rng));
    } catch (error) {
      for (const layer of layers.values()) layer.dispose();
      throw error;
    }
    for (const layer of layers.values()) layer.module.wrapper = layer;
    return new DoraAdapter(model, config, layers, context);
  },
};

export class DoraAdapter extends LoraAdapter {
  override readonly type: string = "dora";
  declare readonly layers: ReadonlyMap<string, DoraLayer>;

  override trainableVariables(): Map<string, tf.Variable> {
    const variables = new Map<string, tf.Variable>();
    for (const [path, layer] of this.layers) {
      variables.set(`${path}.lora_A`, layer.a);
      variables.set(`${path}.lora_B`, layer.b);
      variables.set(`${path}.lora_magnitude_vector`, layer.magnitude);
    }
    return variables;
  }

  /** LoRA's tensors plus `base_model.model.<module>.lora_magnitude_vector` [out] (no ".weight"), as PEFT saves it. */
  override exportTensors(): TensorMap {
    const lora = super.exportTensors();
    const tensors: TensorMap = new Map();
    for (const [path, layer] of this.layers) {
      for (const name of [`base_model.model.${path}.lora_A.weight`, `base_model.model.${path}.lora_B.weight`]) tensors.set(name, lora.get(name)!);
      tensors.set(`base_model.model.${path}.lora_magnitude_vector`, {
        shape: [...layer.magnitude.shape],
        data: Float32Array.from(layer.magnitude.dataSync() as Float32Array),
      });
    }
    return tensors;
  }

  override adapterConfig(): Record<string, unknown> {
    return { ...super.adapterConfig(), use_dora: true };
  }
}

/**
 * A PEFT LoRA or DoRA adapter_model.safetensors as the adapter's own state (loadState's input):
 * `base_model.model.<module>.lora_A.weight` [r, in] becomes `<module>.lora_A` [in, r], lora_B
 * likewise, and `<module>.lora_magnitude_vector` [out] stays as it is. `file` names the source in errors.
 */
export function stateFromPeftTensors(tensors: TensorMap, file: string): TensorMap {
  const state: TensorMap = new Map();
  for (const [name, tensor] of tensors) {
    const lora = /^base_model\.model\.(.+)\.(lora_[AB])\.weight$/.exec(name);
    const magnitude = /^base_model\.model\.(.+)\.lora_magnitude_vector(?:\.weight)?$/.exec(name);
    if (lora && tensor.shape.length === 2) {
      const [rows, columns] = tensor.shape as [number, number];
      const transposed = new Float32Array(rows * columns);
      for (let row = 0; row < rows; row++) for (let column = 0; column < columns; column++) transposed[column * rows + row] = tensor.data[row * columns + column]!;
      state.set(`${lora[1]}.${lora[2]}`, { shape: [columns, rows], data: transposed });
    } else if (magnitude && tensor.shape.length === 1) {
      state.set(`${magnitude[1]}.lora_magnitude_vector`, { shape: [...tensor.shape], data: Float32Array.from(tensor.data) });
    } else {
      throw new Error(`${file}: unexpected tensor "${name}" [${tensor.shape.join(", ")}] in a LoRA/DoRA adapter`);
    }
  }
  return state;
}
