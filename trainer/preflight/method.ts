import { bottleneckTargets } from "../methods/adapter/model.ts";
import { resolveBottleneckConfig } from "../methods/adapter/config.ts";
import { resolveIa3Config } from "../methods/ia3/config.ts";
import { selectIa3Targets } from "../methods/ia3/model.ts";
import { resolveLoraConfig } from "../methods/lora/config.ts";
import { selectTargets } from "../methods/lora/model.ts";
import { MethodOptionsError } from "../methods/method.ts";
import type { ModelConfig } from "../model/config.ts";
import { weightShapes } from "../model/loader.ts";
import type { CausalLM, Linear } from "../model/model.ts";

/** The FineTuneJob's method as the trainer takes it (JobPlan.method). */
export interface MethodSpec {
  type: string;
  options: unknown;
  optionsPath?: string;
}

/**
 * Whether the method can work on a model of this architecture, decided from config.json alone
 * (no weights are read): its target modules exist (LoRA, DoRA, IA3, whose defaults depend on
 * the architecture), PEFT has defaults for it where none are given (IA3), the adapter has
 * sublayer outputs to follow (bottleneck adapters). Returns the problem, naming the spec field,
 * or undefined. The trainer makes the same checks with the loaded model; this runs them before
 * a trainer pod, and its GPU, is held.
 */
export function methodProblem(method: MethodSpec, config: ModelConfig): string | undefined {
  const path = method.optionsPath ?? `spec.method.${method.type}`;
  const model = outline(config);
  try {
    switch (method.type) {
      case "lora":
      case "dora":
        selectTargets(model as CausalLM, resolveLoraConfig(method.options, config, path), path);
        break;
      case "ia3":
        selectIa3Targets(model, resolveIa3Config(method.options, config, path), path);
        break;
      case "adapter":
        bottleneckTargets(model, resolveBottleneckConfig(method.options, path), path);
        break;
      default:
        break;
    }
  } catch (error) {
    if (error instanceof MethodOptionsError) return error.message;
    throw error;
  }
  return undefined;
}

/** The model's linear modules by Hugging Face path, from its weight names: what the target checks read. */
function outline(config: ModelConfig): Pick<CausalLM, "config" | "linears" | "outputHead"> {
  const linears = new Map<string, Linear>();
  const module = (path: string) => ({ path, wrapper: undefined }) as unknown as Linear;
  for (const [name, shape] of weightShapes(config)) {
    if (shape.length === 2 && name.endsWith(".weight") && !/(embed_tokens|wte|wpe)\.weight$/.test(name)) {
      const path = name.slice(0, -".weight".length);
      linears.set(path, module(path));
    }
  }
  if (!linears.has("lm_head")) linears.set("lm_head", module("lm_head"));
  return { config, linears, outputHead: linears.get("lm_head")! };
}
