export * from "./bad-lines.ts";
export * from "./batching.ts";
export * from "./encode.ts";
export * from "./files.ts";
export * from "./loader.ts";
export * from "./options.ts";
export * from "./records.ts";
