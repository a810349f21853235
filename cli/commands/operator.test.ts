import { Command } from "commander";
import { describe, expect, it } from "vitest";
import { queueModes, registerOperator } from "./operator.ts";

describe("kubetune operator --queues", () => {
  it("turns builtin and kueue into startOperator's queues option, in any order and case", () => {
    expect(queueModes(undefined)).toEqual({ builtIn: false, kueue: false });
    expect(queueModes("builtin")).toEqual({ builtIn: true, kueue: false });
    expect(queueModes("kueue")).toEqual({ builtIn: false, kueue: true });
    expect(queueModes("Kueue, builtin")).toEqual({ builtIn: true, kueue: true });
  });

  it("refuses an unknown or empty mode, naming the flag and the modes there are", () => {
    expect(() => queueModes("builtin,volcano")).toThrow('--queues builtin,volcano: unknown queue mode "volcano"; the modes are builtin and kueue (e.g. --queues builtin,kueue)');
    expect(() => queueModes("")).toThrow('--queues : unknown queue mode ""');
    expect(() => queueModes("builtin,")).toThrow('unknown queue mode ""');
  });

  it("exits with status 2 on an unknown mode, before it connects to any cluster", async () => {
    const program = new Command().name("kubetune").exitOverride();
    let stderr = "";
    program.configureOutput({ writeErr: (text) => (stderr += text) });
    registerOperator(program);
    const parsed = program.parseAsync(["node", "kubetune", "operator", "--key-secret", "ns/keys", "--key-secret-dir", "/nonexistent", "--queues", "fifo"]);
    await expect(parsed).rejects.toMatchObject({ exitCode: 2 });
    expect(stderr).toContain('error: --queues fifo: unknown queue mode "fifo"');
  });
});
