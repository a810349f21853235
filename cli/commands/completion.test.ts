import { spawnSync } from "node:child_process";
import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { completionScript } from "./completion.ts";
import { registerCommands } from "./index.ts";

function program(): Command {
  const root = new Command().name("kubetune");
  registerCommands(root);
  return root;
}

/**
 * What bash offers after typing `line` and pressing Tab, with the real script; `kubetune` itself
 * is a stand-in that prints two job names and the arguments it was called with.
 */
function complete(line: string): string[] {
  const words = line.split(" ");
  const script = `${completionScript(program(), "bash")}
kubetune() { echo "tune-a"; echo "tune-b"; echo "args:$*" >&2; }
COMP_WORDS=(${words.map((word) => `'${word}'`).join(" ")})
COMP_CWORD=${words.length - 1}
_kubetune
printf '%s\\n' "\${COMPREPLY[@]}"`;
  const result = spawnSync("bash", ["-c", script], { encoding: "utf8" });
  expect(result.status, result.stderr).toBe(0);
  return result.stdout.split("\n").filter(Boolean);
}

describe("kubetune completion bash", () => {
  it("completes command names", () => {
    expect(complete("kubetune su")).toEqual(["submit", "suspend"]);
  });

  it("completes job names from kubetune list for commands that take a job", () => {
    expect(complete("kubetune status tune-")).toEqual(["tune-a", "tune-b"]);
    expect(complete("kubetune logs -n team-a tune-b")).toEqual(["tune-b"]);
  });

  it("completes a command's flags and dev-cluster's subcommands", () => {
    expect(complete("kubetune submit --w")).toEqual(["--wait"]);
    expect(complete("kubetune dev-cluster u")).toEqual(["up"]);
  });

  it("passes -n to kubetune list", () => {
    const script = `${completionScript(program(), "bash")}
called=$(mktemp)
kubetune() { echo "$*" > "$called"; }
COMP_WORDS=(kubetune logs -n team-a '')
COMP_CWORD=4
_kubetune
cat "$called"; rm -f "$called"`;
    expect(spawnSync("bash", ["-c", script], { encoding: "utf8" }).stdout.trim()).toBe("list -o name -n team-a");
  });
});

describe("kubetune completion zsh and fish", () => {
  it("wraps the bash completion for zsh", () => {
    expect(completionScript(program(), "zsh")).toMatch(/^#compdef kubetune\nautoload -U \+X bashcompinit && bashcompinit\n/);
  });

  it("gives fish the commands and job names", () => {
    const fish = completionScript(program(), "fish");
    expect(fish).toContain("complete -c kubetune -n __fish_use_subcommand -a submit");
    expect(fish).toContain('complete -c kubetune -n "__fish_seen_subcommand_from status logs suspend resume cancel" -a "(kubetune list -o name 2>/dev/null)"');
  });
});
