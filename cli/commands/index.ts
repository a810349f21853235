import type { Command } from "commander";
import { registerDevCluster } from "./dev-cluster.ts";
import { registerOperator } from "./operator.ts";
import { registerPreflight } from "./preflight.ts";
import { registerRun } from "./run.ts";
import { registerTrain } from "./train.ts";
import { registerValidate } from "./validate.ts";

// One line per command; each module adds its own subcommand to the program.
export function registerCommands(program: Command): void {
  registerValidate(program);
  registerOperator(program);
  registerDevCluster(program);
  registerPreflight(program);
  registerRun(program);
  registerTrain(program);
}
