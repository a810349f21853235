import { loraMethod } from "./lora/model.ts";
import type { PeftMethod } from "./method.ts";

/** Every PEFT method the trainer knows. Adding one is adding its folder and one line here. */
const METHODS: readonly PeftMethod[] = [loraMethod];

/** The method for a FineTuneJob's method.type; an unknown type lists the known ones. */
export function getMethod(type: string): PeftMethod {
  const method = METHODS.find((candidate) => candidate.type === type);
  if (!method) throw new Error(`method type "${type}" is not implemented; known: ${methodTypes().join(", ")}`);
  return method;
}

export function methodTypes(): string[] {
  return METHODS.map((method) => method.type);
}
