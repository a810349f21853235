// Types of bin/operator-launch.mjs, for the TypeScript that imports it (bench/operator.ts, tests).
export declare const OPERATOR_NODE_FLAGS: readonly string[];
export declare const ROOT: URL;
export declare const OPERATOR_BUNDLE: URL;
export declare function staleBundle(): string | undefined;
