import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { parseAllDocuments } from "yaml";
import { beforeAll, describe, expect, it } from "vitest";
import { API_VERSION, CRD_FILE, GROUP, KIND, PLURAL, QUEUE_CRD_FILE, QUEUE_KIND, VERSION, validate, validateQueue, validateUpdate } from "../../api/index.ts";
import { ApiError, resourcePath } from "../../kube/client.ts";
import { loadInvalidFixtures } from "../fixtures/invalid/table.ts";
import { createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";

function exampleFiles(dir = "examples"): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? exampleFiles(path.join(dir, entry.name)) : entry.name.endsWith(".yaml") ? [path.join(dir, entry.name)] : [],
  );
}

describe("the FineTuneJob CRD on a real API server", () => {
  const client = kubeClient();
  let namespace: string;
  const jobs = () => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace });

  beforeAll(async () => {
    const applied = kubectl(["apply", "--server-side", "--force-conflicts", "-f", CRD_FILE, "-f", QUEUE_CRD_FILE]);
    expect(applied.stderr).toBe("");
    namespace = await createNamespace("api");
    await eventually("the FineTuneJob CRD to be established", async () => {
      const listed = kubectl(["get", "ftj", "-n", namespace]);
      return listed.status === 0 ? true : undefined;
    });
  });

  it.each(exampleFiles())("accepts %s (kubectl apply --dry-run=server) and validate agrees", (file) => {
    const result = kubectl(["apply", "--dry-run=server", "-n", namespace, "-f", file]);
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
    for (const document of parseAllDocuments(readFileSync(file, "utf8")) as { toJS(): { kind?: string } }[]) {
      const object = document.toJS();
      expect(object.kind === QUEUE_KIND ? validateQueue(object) : validate(object)).toEqual([]);
    }
  });

  const fixtures = loadInvalidFixtures();

  it("has a table of at least 30 invalid manifests", () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(30);
  });

  it.each(fixtures.map((fixture) => [fixture.name, fixture] as const))("refuses %s, naming the field, as validate does", async (_name, fixture) => {
    const withNamespace = (object: Record<string, unknown>) => ({ ...object, metadata: { ...(object.metadata as { name: string }), namespace } });
    let refusal: unknown;
    if (fixture.operation === "create") {
      refusal = await client.create(jobs(), withNamespace(fixture.object), { fieldValidation: "Strict", dryRun: "All" }).catch((error: unknown) => error);
    } else {
      const old = withNamespace(fixture.oldObject!);
      const created = await client.create<{ metadata: { resourceVersion: string } }>(jobs(), old);
      const name = old.metadata.name;
      const withStatus = await client.replace<{ metadata: { resourceVersion: string } }>(
        `${jobs()}/${name}/status`,
        { ...old, metadata: { ...(old.metadata as object), resourceVersion: created.metadata.resourceVersion } },
      );
      const updated = withNamespace(fixture.object);
      refusal = await client
        .replace(`${jobs()}/${name}`, { ...updated, metadata: { ...(updated.metadata as object), resourceVersion: withStatus.metadata.resourceVersion } }, { fieldValidation: "Strict" })
        .catch((error: unknown) => error);
    }
    expect(refusal, `${fixture.file} was accepted by the API server`).toBeInstanceOf(ApiError);
    expect([400, 422]).toContain((refusal as ApiError).status);
    for (const field of fixture.expect) expect((refusal as ApiError).message).toContain(field);

    const problems = fixture.operation === "create" ? validate(fixture.object) : validateUpdate(fixture.oldObject, fixture.object);
    for (const field of fixture.expect) expect(problems.map((problem) => problem.path).some((path) => path.startsWith(field))).toBe(true);
  });

  it("lets a started job change only runPolicy.suspend", async () => {
    const name = "suspendable";
    const job = { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace }, spec: { baseModel: { uri: "s3://models/base" }, dataset: { train: "s3://data/train.jsonl" }, method: { type: "lora" }, output: { uri: "s3://out/x" }, storage: { region: "us-east-1" } } };
    const created = await client.create<{ metadata: { resourceVersion: string } }>(jobs(), job);
    const started = await client.patch<typeof job>(`${jobs()}/${name}/status`, { status: { phase: "Running", startTime: new Date().toISOString() } });
    expect(started.metadata).toBeDefined();
    expect(created.metadata.resourceVersion).toBeDefined();
    await client.patch(`${jobs()}/${name}`, { spec: { runPolicy: { suspend: true } } });
    const refused = await client.patch(`${jobs()}/${name}`, { spec: { method: { lora: { r: 16 } } } }).catch((error: unknown) => error);
    expect((refused as ApiError).status).toBe(422);
    expect((refused as ApiError).message).toContain("spec.method");
  });

  it("shows the printer columns in kubectl get ftj", async () => {
    const name = "columns";
    await client.create(jobs(), { apiVersion: API_VERSION, kind: KIND, metadata: { name }, spec: { baseModel: { uri: "s3://models/base" }, dataset: { train: "s3://data/train.jsonl" }, method: { type: "dora" }, output: { uri: "s3://out/y" } } });
    await client.patch(`${jobs()}/${name}/status`, { status: { phase: "Running", progress: { percent: 42, percentText: "42%", loss: 1.25, lossText: "1.250", eta: "3m10s", step: 42, totalSteps: 100 } } });
    const table = kubectl(["get", "ftj", name, "-n", namespace]);
    expect(table.status).toBe(0);
    const [header, row] = table.stdout.trim().split("\n");
    expect(header!.split(/\s+/)).toEqual(["NAME", "PHASE", "METHOD", "PROGRESS", "LOSS", "ETA", "AGE"]);
    expect(row!.split(/\s+/).slice(0, 6)).toEqual([name, "Running", "dora", "42%", "1.250", "3m10s"]);
  });

  it("explains spec.method with the doc comments", () => {
    const explained = kubectl(["explain", "finetunejob.spec.method"]);
    expect(explained.status).toBe(0);
    expect(explained.stdout).toContain("type");
    expect(explained.stdout).toContain("lora");
    expect(explained.stdout).toMatch(/LoRA: a low-rank update/);
  });
});
