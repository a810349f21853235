import type { Command } from "commander";
import { registerValidate } from "./validate.ts";

// One line per command; each module adds its own subcommand to the program.
export function registerCommands(program: Command): void {
  registerValidate(program);
}
