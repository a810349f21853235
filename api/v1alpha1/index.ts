export * from "./finetunejob.ts";
export * from "./conditions.ts";
export * from "./defaults.ts";
export * from "./validate.ts";
export * from "./crd.ts";
export * from "./docs.ts";
export * from "./contract.ts";
export * from "./display.ts";
