import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { resolveBinaries } from "../binaries.ts";

const script = path.join(import.meta.dirname, "build-binaries.sh");

function build(env: Record<string, string>, names: string[]) {
  const cache = mkdtempSync(path.join(os.tmpdir(), "kubetune-cache-"));
  return spawnSync("bash", [script, ...names], { env: { ...process.env, KUBETUNE_CACHE_DIR: cache, ...env }, encoding: "utf8", timeout: 120_000 });
}

const goOnSystemPath = spawnSync("sh", ["-c", "command -v go"], { env: { PATH: "/usr/bin:/bin" } }).status === 0;

describe("build-binaries.sh", () => {
  it.skipIf(goOnSystemPath)("says what to do when there is no Go toolchain", () => {
    const result = build({ PATH: "/usr/bin:/bin" }, ["etcd"]);
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain("no Go toolchain on PATH");
    expect(result.stderr).toContain("KUBETUNE_ETCD");
  });

  it("reports a failed build with the log's location and the override variable", () => {
    const result = build({ KUBETUNE_ETCD_VERSION: "v3.6.999-nonexistent" }, ["etcd"]);
    expect(result.status).not.toBe(0);
    expect(result.stderr).toMatch(/building etcd v3\.6\.999-nonexistent failed; full log in .*etcd\.log/);
    expect(result.stderr).toContain("point KUBETUNE_ETCD at a binary you already have");
  });

  it("refuses an unknown binary name", () => {
    const result = build({}, ["kubelet"]);
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain("unknown binary 'kubelet'");
  });
});

describe("resolveBinaries", () => {
  it("uses a binary named by its variable, and says when that file is missing", async () => {
    const previous = process.env.KUBETUNE_ETCD;
    process.env.KUBETUNE_ETCD = "/bin/true";
    await expect(resolveBinaries(["etcd"])).resolves.toEqual({ etcd: "/bin/true" });
    process.env.KUBETUNE_ETCD = "/nonexistent/etcd";
    await expect(resolveBinaries(["etcd"])).rejects.toThrow("KUBETUNE_ETCD=/nonexistent/etcd: no such file");
    if (previous === undefined) delete process.env.KUBETUNE_ETCD;
    else process.env.KUBETUNE_ETCD = previous;
  });

  it("wants the Kueue manifests with a Kueue manager named by its variable", async () => {
    const previous = { binary: process.env.KUBETUNE_KUEUE, config: process.env.KUBETUNE_KUEUE_CONFIG };
    process.env.KUBETUNE_KUEUE = "/bin/true";
    process.env.KUBETUNE_KUEUE_CONFIG = "/nonexistent/kueue-config";
    try {
      await expect(resolveBinaries(["kueue"])).rejects.toThrow(/KUBETUNE_KUEUE_CONFIG \/nonexistent\/kueue-config: no such folder.*config\/components \(crd\/ and webhook\/\)/);
      process.env.KUBETUNE_KUEUE_CONFIG = import.meta.dirname;
      await expect(resolveBinaries(["kueue"])).resolves.toEqual({ kueue: "/bin/true" });
    } finally {
      for (const [name, value] of [["KUBETUNE_KUEUE", previous.binary], ["KUBETUNE_KUEUE_CONFIG", previous.config]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });
});
