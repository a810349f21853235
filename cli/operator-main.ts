import { Command } from "commander";
import { registerOperator } from "./commands/operator.ts";

// `kubetune operator` alone: the entry point that `npm run build` bundles into dist/operator.mjs,
// so that the operator process loads neither tsx nor the CLI's other commands (and what they
// import: TensorFlow.js, the S3 client). bin/kubetune.mjs runs it for `kubetune operator`.
const program = new Command().name("kubetune").showHelpAfterError();
registerOperator(program);
await program.parseAsync(process.argv);
