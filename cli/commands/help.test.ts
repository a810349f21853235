import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { registerCommands } from "./index.ts";

function program(): Command {
  const root = new Command().name("kubetune");
  registerCommands(root);
  return root;
}

/** Every command a user can call, subcommands included, but not the hidden ones. */
function commands(command: Command, prefix = ""): [string, Command][] {
  return command.commands
    .filter((sub) => !(sub as Command & { _hidden?: boolean })._hidden)
    .flatMap((sub) => [[`${prefix}${sub.name()}`, sub] as [string, Command], ...commands(sub, `${prefix}${sub.name()} `)]);
}

function helpOf(command: Command): string {
  let text = "";
  command.configureOutput({ writeOut: (chunk) => (text += chunk) });
  command.outputHelp();
  return text;
}

describe("kubetune --help", () => {
  const all = commands(program());

  it("lists the commands a user reaches for", () => {
    expect(all.map(([name]) => name)).toEqual(
      expect.arrayContaining(["run", "validate", "submit", "status", "logs", "list", "suspend", "resume", "cancel", "merge", "dev-cluster", "dev-cluster up", "completion", "operator", "train", "preflight"]),
    );
  });

  it.each(all.map(([name, command]) => [name, command] as const))("kubetune %s --help shows an example of the command", (name, command) => {
    const help = helpOf(command);
    expect(help).toContain("Examples:");
    expect(help.slice(help.indexOf("Examples:"))).toMatch(new RegExp(`\\$ .*kubetune ${name}( |\\)|\\n)`));
  });
});
