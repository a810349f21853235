import { readFileSync } from "node:fs";
import { Command } from "commander";
import { registerCommands } from "./commands/index.ts";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };

const program = new Command()
  .name("kubetune")
  .description("Fine-tune language models with parameter-efficient methods, on Kubernetes or on this machine.")
  .version(pkg.version)
  .showHelpAfterError();

registerCommands(program);

await program.parseAsync(process.argv);
