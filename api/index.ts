// The kubetune API. v1alpha1 is the only version; importers use this module, not the version folder.
export * from "./v1alpha1/index.ts";
export type { ObjectMeta, Problem } from "./schema/schema.ts";
