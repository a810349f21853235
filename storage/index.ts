export * from "./object-store.ts";
export * from "./local-store.ts";
export * from "./s3-store.ts";
export * from "./open-store.ts";
export * from "./publish.ts";
export * from "./signature.ts";
