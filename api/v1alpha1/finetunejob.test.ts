import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import type { AnySchema } from "../schema/schema.ts";
import { propertiesOf } from "../schema/schema.ts";
import { CRD_FILE, buildCrd, renderCrdYaml } from "./crd.ts";
import { API_DOCS_FILE, renderApiDocs } from "./docs.ts";
import { METHOD_TYPES, fineTuneJobSchema, fineTuneJobSpecSchema } from "./finetunejob.ts";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Every field below schema with its path. */
function fields(schema: AnySchema, at: string): [string, AnySchema][] {
  const def = schema.def;
  if (def.type === "array") return fields(def.items, `${at}[]`);
  if (def.type === "map") return fields(def.values, `${at}.*`);
  if (def.type !== "object") return [];
  return Object.entries(def.properties).flatMap(([key, property]) => [[`${at}.${key}`, property] as [string, AnySchema], ...fields(property, `${at}.${key}`)]);
}

describe("the FineTuneJob schema", () => {
  it("gives every field a one-line doc", () => {
    const undocumented = fields(fineTuneJobSchema, "").filter(([, field]) => field.def.doc.trim() === "" || field.def.doc.includes("\n"));
    expect(undocumented.map(([at]) => at)).toEqual([]);
  });

  it("bounds every string and list of the spec, so that CEL rules stay within the API server's cost budget", () => {
    const unbounded = fields(fineTuneJobSpecSchema, "spec").filter(([, field]) => {
      const def = field.def;
      return (def.type === "string" && !def.enum && def.maxLength === undefined) || (def.type === "array" && !(def.maxItems > 0));
    });
    expect(unbounded.map(([at]) => at)).toEqual([]);
  });

  it("has one parameter block per method type", () => {
    const method = propertiesOf(propertiesOf(fineTuneJobSpecSchema).method!);
    expect(Object.keys(method).filter((key) => key !== "type")).toEqual([...METHOD_TYPES]);
  });
});

describe("the CRD", () => {
  it("in crds/ is the one npm run gen:crd generates", () => {
    expect(readFileSync(path.join(repoRoot, CRD_FILE), "utf8")).toBe(renderCrdYaml());
  });

  it("names the kind, its short name and category, and has a status subresource and the printer columns", () => {
    const crd = parse(renderCrdYaml()) as ReturnType<typeof buildCrd> & {
      spec: { names: Record<string, unknown>; versions: { subresources: unknown; additionalPrinterColumns: { name: string; jsonPath: string }[] }[] };
    };
    expect(crd.spec.names).toEqual({
      kind: "FineTuneJob",
      listKind: "FineTuneJobList",
      plural: "finetunejobs",
      singular: "finetunejob",
      shortNames: ["ftj"],
      categories: ["kubetune"],
    });
    const [version] = crd.spec.versions;
    expect(version?.subresources).toEqual({ status: {} });
    expect(version?.additionalPrinterColumns.map((column) => `${column.name}=${column.jsonPath}`)).toEqual([
      "Phase=.status.phase",
      "Method=.spec.method.type",
      "Progress=.status.progress.percentText",
      "Loss=.status.progress.lossText",
      "ETA=.status.progress.eta",
      "Age=.metadata.creationTimestamp",
    ]);
  });

  it("makes every spec field but runPolicy.suspend immutable after the start, one rule per field", () => {
    const rules = (buildCrd() as { spec: { versions: { schema: { openAPIV3Schema: { "x-kubernetes-validations": { fieldPath: string; rule: string }[] } } }[] } })
      .spec.versions[0]!.schema.openAPIV3Schema["x-kubernetes-validations"];
    const guarded = Object.keys(propertiesOf(fineTuneJobSpecSchema))
      .filter((key) => key !== "runPolicy")
      .map((key) => `.spec.${key}`);
    expect(rules.map((rule) => rule.fieldPath)).toEqual(expect.arrayContaining([...guarded, ".spec.runPolicy.backoffLimit"]));
    expect(rules.map((rule) => rule.fieldPath)).not.toContain(".spec.runPolicy.suspend");
    const queueName = rules.find((rule) => rule.fieldPath === ".spec.queueName");
    expect(queueName?.rule).toBe(
      "!(has(oldSelf.status) && has(oldSelf.status.startTime)) || (has(self.spec.queueName) == has(oldSelf.spec.queueName) && (!has(self.spec.queueName) || self.spec.queueName == oldSelf.spec.queueName))",
    );
  });
});

describe("docs/api.md", () => {
  it("is the one npm run gen:docs generates", () => {
    expect(readFileSync(path.join(repoRoot, API_DOCS_FILE), "utf8")).toBe(renderApiDocs());
  });

  it("carries the doc line of a field", () => {
    expect(renderApiDocs()).toContain("| `r` | integer, >= 1, <= 1024 | `8` | Rank of the update matrices");
  });
});
