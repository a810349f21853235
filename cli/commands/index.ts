import type { Command } from "commander";

// One line per command; each module adds its own subcommand to the program.
export function registerCommands(_program: Command): void {}
