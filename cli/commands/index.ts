import type { Command } from "commander";
import { registerCompletion } from "./completion.ts";
import { registerDevCluster } from "./dev-cluster.ts";
import { registerLifecycle } from "./lifecycle.ts";
import { registerList } from "./list.ts";
import { registerLogs } from "./logs.ts";
import { registerMerge } from "./merge.ts";
import { registerOperator } from "./operator.ts";
import { registerPreflight } from "./preflight.ts";
import { registerRun } from "./run.ts";
import { registerStatus } from "./status.ts";
import { registerSubmit } from "./submit.ts";
import { registerTrain } from "./train.ts";
import { registerValidate } from "./validate.ts";

// One line per command, in the order --help lists them (what a user reaches for first); each
// module adds its own subcommand to the program.
export function registerCommands(program: Command): void {
  registerRun(program);
  registerValidate(program);
  registerSubmit(program);
  registerStatus(program);
  registerLogs(program);
  registerList(program);
  registerLifecycle(program);
  registerMerge(program);
  registerDevCluster(program);
  registerCompletion(program);
  registerOperator(program);
  registerTrain(program);
  registerPreflight(program);
}
