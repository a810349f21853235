import { bottleneckMethod } from "./adapter/model.ts";
import { doraMethod } from "./dora/model.ts";
import { fullMethod } from "./full/model.ts";
import { ia3Method } from "./ia3/model.ts";
import { loraMethod } from "./lora/model.ts";
import type { PeftMethod } from "./method.ts";
import { prefixMethod } from "./prefix/model.ts";
import { promptMethod } from "./prompt/model.ts";
import { skTuningMethod } from "./sk-tuning/model.ts";

/** Every PEFT method the trainer knows. Adding one is adding its folder and one line here. */
const METHODS: readonly PeftMethod[] = [
  loraMethod,
  doraMethod,
  ia3Method,
  bottleneckMethod,
  fullMethod,
  prefixMethod,
  promptMethod,
  skTuningMethod,
];

/** The method for a FineTuneJob's method.type; an unknown type lists the known ones. */
export function getMethod(type: string): PeftMethod {
  const method = METHODS.find((candidate) => candidate.type === type);
  if (!method) throw new Error(`method type "${type}" is not implemented; known: ${methodTypes().join(", ")}`);
  return method;
}

export function methodTypes(): string[] {
  return METHODS.map((method) => method.type);
}
