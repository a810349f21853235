import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

// `kubetune operator` runs dist/operator.mjs (scripts/build-operator.mjs) when it is fresh: what
// goes into that bundle decides the operator's memory, and a stale bundle would run old code.

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, "..");

describe("the operator bundle", () => {
  it("holds the operator and what it imports, without tsx, TensorFlow, the S3 client or @kubernetes/client-node, and runs", async () => {
    const outdir = await mkdtemp(path.join(os.tmpdir(), "kubetune-operator-bundle-"));
    await run(process.execPath, [path.join(root, "scripts/build-operator.mjs"), outdir], { cwd: root });
    const inputs = Object.keys(JSON.parse(await readFile(path.join(outdir, "operator.inputs.json"), "utf8")) as Record<string, string>);
    expect(inputs).toEqual(expect.arrayContaining(["cli/operator-main.ts", "cli/commands/operator.ts", "operator/operator.ts", "kube/client.ts", "kube/config-loader.ts", "package.json"]));
    const packages = new Set(inputs.filter((file) => file.startsWith("node_modules/")).map((file) => file.split("/").slice(1, file.split("/")[1]!.startsWith("@") ? 3 : 2).join("/")));
    for (const heavy of ["@kubernetes/client-node", "tsx", "esbuild", "@tensorflow/tfjs-core", "@tensorflow/tfjs-node", "@aws-sdk/client-s3"]) expect(packages).not.toContain(heavy);
    // @kubernetes/client-node stays outside (external), imported only when a kubeconfig has an exec or auth-provider user.
    const bundle = await readFile(path.join(outdir, "operator.mjs"), "utf8");
    expect(bundle.match(/^.*["']@kubernetes\/client-node["'].*$/gm)?.filter((line) => !line.trim().startsWith("\""))).toEqual(['    const { KubeConfig } = await import("@kubernetes/client-node");']);
    // Run from a folder of its own: it reads nothing relative to itself (the version is inline).
    const { stdout } = await run(process.execPath, [path.join(outdir, "operator.mjs"), "operator", "--help"]);
    const version = (JSON.parse(await readFile(path.join(root, "package.json"), "utf8")) as { version: string }).version;
    expect(stdout).toContain(`ghcr.io/kubetune/kubetune-trainer-cpu:${version}`);
  });

  it("is what bin/kubetune.mjs runs for `kubetune operator` while every file it was built from is unchanged; else the sources run", async () => {
    // A checkout in miniature: bin/kubetune.mjs, a "bundle" and a "CLI" that say which ran, one source file.
    const checkout = await mkdtemp(path.join(os.tmpdir(), "kubetune-bin-"));
    for (const folder of ["bin", "dist", "cli"]) await mkdir(path.join(checkout, folder));
    for (const file of ["bin/kubetune.mjs", "bin/operator-launch.mjs"]) await copyFile(path.join(root, file), path.join(checkout, file));
    await symlink(path.join(root, "node_modules"), path.join(checkout, "node_modules"));
    await writeFile(path.join(checkout, "cli/main.ts"), 'console.log(`sources: ${process.argv.slice(2).join(" ")}`);\n');
    await writeFile(path.join(checkout, "cli/source.ts"), "export {};\n");
    await writeFile(path.join(checkout, "dist/operator.mjs"), 'console.log(`bundle: ${process.argv.slice(2).join(" ")}`);\n');
    await writeFile(path.join(checkout, "dist/operator.inputs.json"), JSON.stringify({ "cli/source.ts": createHash("sha256").update("export {};\n").digest("hex") }));
    const kubetune = async (...args: string[]) => (await run(process.execPath, [path.join(checkout, "bin/kubetune.mjs"), ...args])).stdout.trim().split("\n");

    expect(await kubetune("operator", "--concurrency=8")).toEqual(["kubetune operator: running the compiled bundle dist/operator.mjs", "bundle: operator --concurrency=8"]);
    // Every other command runs the sources, and says nothing about bundles.
    expect(await kubetune("status", "x")).toEqual(["sources: status x"]);

    await writeFile(path.join(checkout, "cli/source.ts"), "export const edited = true;\n");
    expect(await kubetune("operator")).toEqual(["kubetune operator: running the TypeScript sources through tsx (cli/source.ts has changed since dist/operator.mjs was built; npm run build makes it)", "sources: operator"]);
  });
});
