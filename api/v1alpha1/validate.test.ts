import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { loadInvalidFixtures } from "../../tests/fixtures/invalid/table.ts";
import { QUEUE_KIND, validateQueue } from "./finetunequeue.ts";
import { describeProblems, validate, validateUpdate } from "./validate.ts";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

function minimalJob(spec: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: "kubetune.io/v1alpha1",
    kind: "FineTuneJob",
    metadata: { name: "job" },
    spec: {
      baseModel: { uri: "s3://models/base" },
      dataset: { train: "s3://datasets/train.jsonl" },
      method: { type: "lora" },
      output: { uri: "s3://adapters/out" },
      ...spec,
    },
  };
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith(".yaml"))
    .map((entry) => path.join(entry.parentPath, entry.name))
    .sort();
}

describe("the invalid manifest table", () => {
  const fixtures = loadInvalidFixtures();

  it("holds at least 30 cases, among them a changed spec on a running job", () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(30);
    expect(fixtures.some((fixture) => fixture.operation === "update")).toBe(true);
  });

  it.each(fixtures.map((fixture) => [fixture.name, fixture] as const))("refuses %s, naming the field", (_name, fixture) => {
    const problems = fixture.operation === "update" ? validateUpdate(fixture.oldObject, fixture.object) : validate(fixture.object);
    expect(problems.map((problem) => problem.path).sort()).toEqual([...fixture.expect].sort());
    for (const problem of problems) expect(problem.message).not.toBe("");
  });

  it.each(fixtures.filter((fixture) => fixture.operation === "update").map((fixture) => [fixture.name, fixture] as const))(
    "accepts the new version of %s on its own: only the update is wrong",
    (_name, fixture) => {
      expect(validate(fixture.oldObject)).toEqual([]);
      expect(validate(fixture.object)).toEqual([]);
    },
  );
});

describe("the examples", () => {
  const files = yamlFiles(path.join(repoRoot, "examples"));

  it("cover every method and objective, the quickstart and the dev-cluster quickstart", () => {
    const specs = files.flatMap((file) => parseAllDocuments(readFileSync(file, "utf8")) as unknown as { toJS(): { spec: { method: { type: string }; objective?: { type: string } } } }[])
      .map((document) => document.toJS() as unknown as { kind: string; spec: { method: { type: string }; objective?: { type: string } } })
      .filter((object) => object.kind !== QUEUE_KIND)
      .map((object) => object.spec);
    expect(new Set(specs.map((spec) => spec.method.type))).toEqual(new Set(["lora", "dora", "ia3", "prefix", "prompt", "skTuning", "adapter", "full"]));
    expect(new Set(specs.map((spec) => spec.objective?.type ?? "sft"))).toEqual(new Set(["sft", "dpo", "reward", "classification", "rlaif"]));
    expect(files.map((file) => path.relative(repoRoot, file))).toEqual(expect.arrayContaining(["examples/quickstart.yaml", "examples/dev-cluster/quickstart.yaml"]));
  });

  it.each(files.map((file) => [path.relative(repoRoot, file), file]))("%s is valid", (_name, file) => {
    const documents = parseAllDocuments(readFileSync(file, "utf8"));
    expect(Array.isArray(documents) && documents.length).toBeGreaterThan(0);
    for (const document of documents as unknown as { errors: unknown[]; toJS(): unknown }[]) {
      expect(document.errors).toEqual([]);
      const object = document.toJS() as { kind?: string };
      expect(object.kind === QUEUE_KIND ? validateQueue(object) : validate(object)).toEqual([]);
    }
  });
});

describe("validate", () => {
  it("accepts the smallest useful job: model, data, method and output", () => {
    expect(validate(minimalJob())).toEqual([]);
  });

  it("refuses another kind at kind, without judging its fields as a FineTuneJob", () => {
    expect(validate({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "x" }, data: {} })).toEqual([
      { path: "kind", message: 'must be FineTuneJob (kubetune.io/v1alpha1), not "ConfigMap"' },
    ]);
  });

  it("refuses another version at apiVersion, and missing type fields at their names", () => {
    expect(validate({ ...minimalJob(), apiVersion: "kubetune.io/v1" })).toEqual([{ path: "apiVersion", message: "must be kubetune.io/v1alpha1, not \"kubetune.io/v1\"" }]);
    const { apiVersion: _apiVersion, kind: _kind, ...bare } = minimalJob();
    expect(validate(bare).map((problem) => problem.path)).toEqual(["apiVersion", "kind"]);
  });

  it("refuses what is not an object at all", () => {
    expect(validate("lora")).toEqual([{ path: "", message: "must be a FineTuneJob object (a mapping with apiVersion, kind, metadata and spec)" }]);
  });

  it("needs a DNS-subdomain name", () => {
    expect(validate({ ...minimalJob(), metadata: {} })).toEqual([{ path: "metadata.name", message: "is required" }]);
    expect(validate({ ...minimalJob(), metadata: { name: "My_Job" } }).map((problem) => problem.path)).toEqual(["metadata.name"]);
    expect(validate({ ...minimalJob(), metadata: { generateName: "job-" } })).toEqual([]);
  });

  it("reports every problem of a manifest, not just the first", () => {
    const job = minimalJob({ method: { type: "lora", lora: { r: 0, alpha: -1 } }, hyperparameters: { batchSize: 0 } });
    expect(validate(job)).toEqual([
      { path: "spec.method.lora.r", message: "must be >= 1" },
      { path: "spec.method.lora.alpha", message: "must be > 0" },
      { path: "spec.hyperparameters.batchSize", message: "must be >= 1" },
    ]);
  });

  it("accepts local paths and file:// URIs, which kubetune run reads", () => {
    expect(validate(minimalJob({ baseModel: { uri: "models/smollm" }, dataset: { train: "file:///data/train.jsonl" }, output: { uri: "../out" } }))).toEqual([]);
  });

  it("accepts a custom endpoint with a Secret or a ServiceAccount for credentials", () => {
    expect(validate(minimalJob({ storage: { endpoint: "https://minio.example.com", secretRef: { name: "s3" } } }))).toEqual([]);
    expect(validate(minimalJob({ storage: { endpoint: "https://minio.example.com", serviceAccountName: "trainer" } }))).toEqual([]);
  });

  it("validates the status the operator writes", () => {
    const status = {
      phase: "Running",
      conditions: [{ type: "Running", status: "True", reason: "Training", message: "step 10 of 100", lastTransitionTime: "2025-06-01T10:00:00Z" }],
      progress: { step: 10, totalSteps: 100, percent: 10, loss: 2.5, eta: "4m" },
    };
    expect(validate({ ...minimalJob(), status })).toEqual([]);
    expect(validate({ ...minimalJob(), status: { ...status, phase: "Done" } }).map((problem) => problem.path)).toEqual(["status.phase"]);
  });
});

describe("validateUpdate", () => {
  const started = { startTime: "2025-06-01T10:00:00Z", phase: "Running" };

  it("lets a started job be suspended and resumed", () => {
    const old = { ...minimalJob(), status: started };
    expect(validateUpdate(old, { ...minimalJob({ runPolicy: { suspend: true } }), status: started })).toEqual([]);
  });

  it("lets any field change before the job has started", () => {
    expect(validateUpdate(minimalJob(), minimalJob({ hyperparameters: { learningRate: 0.01 } }))).toEqual([]);
  });

  it("treats a field written out with its default value as unchanged", () => {
    const old = { ...minimalJob(), status: started };
    expect(validateUpdate(old, { ...minimalJob({ hyperparameters: { batchSize: 8 } }), status: started })).toEqual([]);
  });

  it("refuses each changed field of a started job, at its own path", () => {
    const old = { ...minimalJob(), status: started };
    const changed = minimalJob({ queueName: "gpu", output: { uri: "s3://adapters/other" }, runPolicy: { backoffLimit: 1, suspend: true } });
    expect(validateUpdate(old, { ...changed, status: started }).map((problem) => problem.path)).toEqual([
      "spec.output",
      "spec.runPolicy.backoffLimit",
      "spec.queueName",
    ]);
  });

  it("also reports the new version's own problems", () => {
    expect(validateUpdate(minimalJob(), minimalJob({ method: { type: "lora", lora: { r: 0 } } }))).toEqual([
      { path: "spec.method.lora.r", message: "must be >= 1" },
    ]);
  });
});

describe("describeProblems", () => {
  it("puts every problem in one condition message", () => {
    expect(describeProblems(validate(minimalJob({ method: { type: "lora", lora: { r: 0 } }, queueName: "Q" })))).toBe(
      'invalid spec: spec.method.lora.r: must be >= 1; spec.queueName: must be a lowercase DNS subdomain name, not "Q"',
    );
  });
});

describe("objective rlaif", () => {
  const rlaif = (rlaifBlock: Record<string, unknown> | undefined, spec: Record<string, unknown> = {}) =>
    minimalJob({ dataset: { train: "s3://datasets/prompts.jsonl", format: "text" }, objective: { type: "rlaif", ...(rlaifBlock ? { rlaif: rlaifBlock } : {}) }, ...spec });
  const paths = (object: Record<string, unknown>) => validate(object).map((problem) => problem.path).sort();

  it("accepts either judge, with bounds on the round settings", () => {
    expect(validate(rlaif({ judge: { rewardModel: { uri: "s3://adapters/reward" } } }))).toEqual([]);
    expect(validate(rlaif({ rounds: 3, samplesPerPrompt: 8, temperature: 0.7, topP: 0.9, maxNewTokens: 64, stepsPerRound: 20, judge: { template: "{prompt}{response} Good?", verdictTokens: [" Yes", " No"] } }))).toEqual([]);
    expect(paths(rlaif({ samplesPerPrompt: 1, temperature: 0, topP: 1.5, judge: { rewardModel: { uri: "s3://adapters/reward" } } }))).toEqual([
      "spec.objective.rlaif.samplesPerPrompt",
      "spec.objective.rlaif.temperature",
      "spec.objective.rlaif.topP",
    ]);
  });

  it("names the field of each misuse", () => {
    expect(paths(rlaif(undefined))).toEqual(["spec.objective.rlaif"]);
    expect(paths(minimalJob({ objective: { type: "dpo", rlaif: { judge: { rewardModel: { uri: "s3://adapters/reward" } } } }, dataset: { train: "s3://datasets/p.jsonl", format: "preference" } }))).toEqual(["spec.objective.rlaif"]);
    expect(paths(rlaif({ judge: { rewardModel: { uri: "s3://adapters/reward" }, template: "{response}", verdictTokens: ["a", "b"] } }))).toEqual(["spec.objective.rlaif.judge"]);
    expect(paths(rlaif({ judge: {} }))).toEqual(["spec.objective.rlaif.judge"]);
    expect(paths(rlaif({ judge: { template: "{response}" } }))).toEqual(["spec.objective.rlaif.judge.verdictTokens"]);
    expect(paths(rlaif({ judge: { template: "{prompt} only", verdictTokens: ["a", "b"] } }))).toEqual(["spec.objective.rlaif.judge.template"]);
    const judge = { rewardModel: { uri: "s3://adapters/reward" } };
    expect(validate(rlaif({ minResponseTokens: 4, maxNewTokens: 16, judge }))).toEqual([]);
    expect(paths(rlaif({ minResponseTokens: 20, maxNewTokens: 16, judge }))).toEqual(["spec.objective.rlaif.minResponseTokens"]);
    expect(paths(rlaif({ minResponseTokens: 0, judge }))).toEqual(["spec.objective.rlaif.minResponseTokens"]);
    expect(paths(rlaif({ judge: { rewardModel: { uri: "s3://adapters/reward" } } }, { dataset: { train: "s3://datasets/p.jsonl", format: "preference" } }))).toEqual(["spec.dataset.format", "spec.objective.type"]);
    expect(paths(rlaif({ judge: { rewardModel: { uri: "s3://adapters/reward" } } }, { hyperparameters: { maxSteps: 10 } }))).toEqual(["spec.hyperparameters"]);
  });
});
