import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { formatProblems, validateFiles } from "./validate.ts";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const dir = mkdtempSync(path.join(os.tmpdir(), "kubetune-validate-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function write(name: string, text: string): string {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

function job(name: string, lora = "{}"): string {
  return `apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata:
  name: ${name}
spec:
  baseModel:
    uri: s3://models/base
  dataset:
    train: s3://datasets/train.jsonl
  method:
    type: lora
    lora: ${lora}
  output:
    uri: s3://adapters/${name}
`;
}

const valid = write("valid.yaml", job("good"));
const invalid = write("invalid.yaml", job("bad", "{r: 0}"));
const multi = write("multi.yaml", `${job("one")}---\n${job("two", "{r: 0, alpha: -1}")}---\n`);
const broken = write("broken.yaml", "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nspec:\n  method: [lora\n");
const json = write("job.json", JSON.stringify({ apiVersion: "kubetune.io/v1alpha1", kind: "FineTuneJob", metadata: { name: "json" }, spec: {} }, null, "\t"));
const brokenJson = write("broken.json", '{\n  "kind": "FineTuneJob",\n}\n');
const secret = write("secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s3\n");

describe("validateFiles and formatProblems", () => {
  it("print nothing for a valid file", async () => {
    const report = await validateFiles([valid]);
    expect(report.valid).toBe(true);
    expect(formatProblems(report)).toEqual([]);
  });

  it("print bare path: message lines for a single document", async () => {
    const report = await validateFiles([invalid]);
    expect(report.valid).toBe(false);
    expect(formatProblems(report)).toEqual(["spec.method.lora.r: must be >= 1"]);
    expect(report.documents[0]?.problems[0]).toMatchObject({ path: "spec.method.lora.r", line: 12 });
  });

  it("prefix the file and document number when there are several, skipping empty documents", async () => {
    const report = await validateFiles([valid, multi]);
    expect(report.documents.map((document) => [document.name, document.valid])).toEqual([
      ["good", true],
      ["one", true],
      ["two", false],
    ]);
    expect(formatProblems(report)).toEqual([`${multi}#2: spec.method.lora.r: must be >= 1`, `${multi}#2: spec.method.lora.alpha: must be > 0`]);
  });

  it("report YAML syntax errors as file:line:column", async () => {
    const lines = formatProblems(await validateFiles([broken]));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^${escapeRegExp(broken)}:\\d+:\\d+: `));
  });

  it("read JSON, and report its syntax errors with a line", async () => {
    expect(formatProblems(await validateFiles([json]))).toEqual([
      "spec.baseModel: is required",
      "spec.dataset: is required",
      "spec.method: is required",
      "spec.output: is required",
    ]);
    expect(formatProblems(await validateFiles([brokenJson]))[0]).toMatch(new RegExp(`^${escapeRegExp(brokenJson)}:3:1: invalid JSON`));
  });

  it("refuse another kind at kind, and a missing file", async () => {
    const missing = path.join(dir, "missing.yaml");
    expect(formatProblems(await validateFiles([secret, missing]))).toEqual([
      `${secret}: kind: must be FineTuneJob (kubetune.io/v1alpha1), not "Secret"`,
      expect.stringMatching(new RegExp(`^${escapeRegExp(missing)}: cannot read the file: ENOENT`)),
    ]);
  });
});

describe("kubetune validate", () => {
  const run = (...args: string[]) =>
    promisify(execFile)(process.execPath, [path.join(repoRoot, "bin/kubetune.mjs"), "validate", ...args], { cwd: repoRoot }).then(
      (result) => ({ code: 0, ...result }),
      (error: { code: number; stdout: string; stderr: string }) => ({ code: error.code, stdout: error.stdout, stderr: error.stderr }),
    );

  it("exits 0 for valid files and 1 with one line per problem otherwise; --json prints the report", async () => {
    const [ok, bad, asJson] = await Promise.all([run(valid, "examples/lora.yaml"), run(invalid), run("--json", valid, invalid)]);
    expect(ok).toMatchObject({ code: 0, stdout: "" });
    expect(bad).toMatchObject({ code: 1, stdout: "spec.method.lora.r: must be >= 1\n" });
    expect(asJson.code).toBe(1);
    expect(JSON.parse(asJson.stdout)).toMatchObject({
      valid: false,
      documents: [
        { file: valid, valid: true, problems: [] },
        { file: invalid, kind: "FineTuneJob", name: "bad", valid: false, problems: [{ path: "spec.method.lora.r", message: "must be >= 1" }] },
      ],
    });
  });
});
