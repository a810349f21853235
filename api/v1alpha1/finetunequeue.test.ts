import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { QUEUE_API_DOCS_FILE, QUEUE_CRD_FILE, applyQueueDefaults, buildQueueCrd, renderQueueApiDocs, renderQueueCrdYaml, validateQueue } from "./finetunequeue.ts";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const queue = (spec: Record<string, unknown>) => ({ apiVersion: "kubetune.io/v1alpha1", kind: "FineTuneQueue", metadata: { name: "gpus" }, spec });

describe("FineTuneQueue", () => {
  it("has its generated CRD and field reference committed, up to date", () => {
    expect(readFileSync(path.join(repoRoot, QUEUE_CRD_FILE), "utf8")).toBe(renderQueueCrdYaml());
    expect(readFileSync(path.join(repoRoot, QUEUE_API_DOCS_FILE), "utf8")).toBe(renderQueueApiDocs());
  });

  it("is cluster-scoped, short name ftq, with quota, use and queue columns", () => {
    const crd = buildQueueCrd() as { spec: { scope: string; names: { shortNames: string[] }; versions: { additionalPrinterColumns: { name: string; jsonPath: string }[] }[] } };
    expect(crd.spec.scope).toBe("Cluster");
    expect(crd.spec.names.shortNames).toEqual(["ftq"]);
    expect(crd.spec.versions[0]!.additionalPrinterColumns.map((column) => [column.name, column.jsonPath])).toEqual(
      expect.arrayContaining([
        ["GPUs", ".spec.gpus"],
        ["In Use", ".status.gpusInUse"],
        ["Queued", ".status.queued"],
      ]),
    );
  });

  it("defaults preemption to LowerPriority and requires gpus", () => {
    expect(applyQueueDefaults({ gpus: 2 }).preemption).toBe("LowerPriority");
    expect(validateQueue(queue({ gpus: 2 }))).toEqual([]);
    expect(validateQueue(queue({}))).toEqual([expect.objectContaining({ path: "spec.gpus" })]);
    expect(validateQueue(queue({ gpus: 1, preemption: "Always" }))).toEqual([expect.objectContaining({ path: "spec.preemption" })]);
  });

  it("checks selector expressions: values only with In and NotIn", () => {
    const selector = (expression: Record<string, unknown>) => queue({ gpus: 1, namespaceSelector: { matchExpressions: [expression] } });
    expect(validateQueue(selector({ key: "team", operator: "In", values: ["a"] }))).toEqual([]);
    expect(validateQueue(selector({ key: "team", operator: "Exists" }))).toEqual([]);
    expect(validateQueue(selector({ key: "team", operator: "In" }))).toEqual([expect.objectContaining({ path: "spec.namespaceSelector.matchExpressions[0].values" })]);
  });

  it("refuses another kind by name", () => {
    expect(validateQueue({ ...queue({ gpus: 1 }), kind: "FineTuneJob" })).toEqual([{ path: "kind", message: 'must be FineTuneQueue (kubetune.io/v1alpha1), not "FineTuneJob"' }]);
  });
});
