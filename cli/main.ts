import { readFileSync } from "node:fs";
import { Command } from "commander";
import { registerCommands } from "./commands/index.ts";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };

const program = new Command()
  .name("kubetune")
  .description("Fine-tune language models with parameter-efficient methods, on Kubernetes or on this machine.")
  .version(pkg.version)
  .showHelpAfterError()
  .addHelpText(
    "after",
    `
Examples:
  $ npx kubetune run examples/quickstart.yaml                       # train on this machine
  $ eval "$(npx kubetune dev-cluster up)"                           # a local cluster
  $ npx kubetune submit examples/dev-cluster/quickstart.yaml --wait # train there
  $ npx kubetune status quickstart

kubetune COMMAND --help shows each command's options and examples.`,
  );

registerCommands(program);

await program.parseAsync(process.argv);
