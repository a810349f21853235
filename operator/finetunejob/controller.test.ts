import type { V1Pod } from "@kubernetes/client-node";
import { afterEach, describe, expect, it, vi } from "vitest";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { resourcePath } from "../../kube/client.ts";
import { FakeKube } from "../../kube/fake.ts";
import { OperatorMetrics } from "../metrics.ts";
import { EventRecorder } from "../runtime/events.ts";
import { FineTuneJobController } from "./controller.ts";
import type { DecideSettings } from "./decide.ts";

const namespace = "team-a";
const settings: DecideSettings = {
  defaultImage: "kubetune-trainer:test",
  progressUrl: "https://operator:8443",
  terminationGraceSeconds: 30,
  preflight: false,
  imagePullTimeoutSeconds: 60,
  unschedulableTimeoutSeconds: 60,
  retryBackoffBaseSeconds: 10,
  retryBackoffMaxSeconds: 300,
};
const jobPath = (name?: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
const statusPath = (name: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name, subresource: "status" });
const podPath = (name?: string) => resourcePath({ group: "", version: "v1", plural: "pods", namespace, name });

function manifest(name: string, spec: Record<string, unknown> = {}): FineTuneJob {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace },
    spec: {
      baseModel: { uri: "s3://models/tiny" },
      dataset: { train: "s3://data/train.jsonl" },
      method: { type: "lora" },
      output: { uri: "s3://out/tune" },
      ...spec,
    },
  } as FineTuneJob;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe("FineTuneJobController against a lagging cache", () => {
  let controller: FineTuneJobController | undefined;
  let metrics: OperatorMetrics;
  afterEach(async () => {
    await controller?.stop();
    controller = undefined;
  });

  function start(kube: FakeKube, overrides: Partial<DecideSettings> = {}): Promise<void> {
    const client = kube.asClient();
    controller = new FineTuneJobController({
      client,
      settings: { ...settings, ...overrides },
      metrics: (metrics = new OperatorMetrics()),
      events: new EventRecorder(client, "test"),
      namespaces: [namespace],
      concurrency: 2,
      log: () => {},
    });
    return controller.sync().then(() => controller!.start());
  }

  const podCreations = (kube: FakeKube) => kube.calls.filter((call) => call.method === "POST" && call.path === podPath()).map((call) => (call.body as V1Pod).metadata?.name);

  it("creates one trainer pod when the job's new status arrives before the pod cache has the pod", async () => {
    const kube = new FakeKube();
    await kube.create(jobPath(), manifest("tune"));
    kube.holdWatch("pods");
    await start(kube);
    await until("status.attempts", () => (kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts ?? 0) >= 1);
    // The status write came back through the job watch while the pod cache still lacks the pod.
    await sleep(300);
    expect(podCreations(kube)).toEqual(["tune-train-1"]);
    kube.releaseWatch("pods");
    await sleep(200);
    expect(podCreations(kube)).toEqual(["tune-train-1"]);
    expect(kube.storedIn<V1Pod>(podPath()).map((pod) => pod.metadata?.name)).toEqual(["tune-train-1"]);
  });

  it("reads the pod live before concluding that a pod of a restarted operator's attempt vanished", async () => {
    const kube = new FakeKube();
    const job = await kube.create<FineTuneJob>(jobPath(), manifest("tune"));
    await kube.create(podPath(), {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name: "tune-train-1",
        labels: { "kubetune.io/job-name": "tune", "app.kubernetes.io/component": "trainer", "kubetune.io/attempt": "1" },
        ownerReferences: [{ apiVersion: API_VERSION, kind: KIND, name: "tune", uid: job.metadata.uid!, controller: true }],
      },
    });
    await kube.patch(statusPath("tune"), { status: { phase: "Running", attempts: 1 } });
    // This operator's pod cache listed before the pod existed (a restart in between).
    kube.holdWatch("pods");
    const listBefore = kube.list.bind(kube);
    kube.list = (async (path: string, query?: { labelSelector?: string }) => {
      const result = await listBefore(path, query);
      return path === podPath() ? { ...result, items: [], metadata: { resourceVersion: "0" } } : result;
    }) as typeof kube.list;
    const before = podCreations(kube).length;
    await start(kube);
    await sleep(400);
    expect(podCreations(kube).slice(before)).toEqual([]);
    expect(kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts).toBe(1);
  });

  it("never writes status computed from a stale job over a newer one", async () => {
    const kube = new FakeKube();
    await kube.create(jobPath(), manifest("tune"));
    // The job cache keeps the job as listed: without the status the first reconcile writes.
    kube.holdWatch(PLURAL);
    await start(kube);
    await until("status.attempts = 1", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    const foreign = { type: "Admitted", status: "True", reason: "Admitted", message: "written by another controller", lastTransitionTime: new Date().toISOString() };
    await kube.update(jobPath("tune"), (object) => {
      const status = object.status as NonNullable<FineTuneJob["status"]>;
      status.conditions = [...(status.conditions ?? []), foreign as never];
    });
    // The pod starts: a reconcile runs on the stale job.
    await kube.update(podPath("tune-train-1"), (pod) => {
      (pod as V1Pod).status = { phase: "Running" };
    });
    await sleep(300);
    const hasForeign = () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.conditions?.some((condition) => condition.message === foreign.message);
    expect(hasForeign()).toBe(true);
    kube.releaseWatch(PLURAL);
    await until("the fresh reconcile to write Training and keep the foreign condition", () => {
      const running = kube.stored<FineTuneJob>(jobPath("tune"))?.status?.conditions?.find((condition) => condition.type === "Running");
      return running?.reason === "Training" && hasForeign();
    });
  });

  it("starts a job with 3 API writes (pod, status, Event), no finalizer and no Secret: the trainer's progress token is projected, not stored", async () => {
    const kube = new FakeKube();
    await kube.create(jobPath(), { ...manifest("tune"), metadata: { name: "tune", namespace } });
    const before = kube.calls.length;
    await start(kube);
    await until("attempt 1 in status", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1 || undefined);
    await sleep(300);
    const writes = kube.calls.slice(before).filter((call) => !["GET", "LIST", "WATCH"].includes(call.method));
    expect(writes.filter((call) => call.path.includes("/secrets"))).toEqual([]);
    expect(writes.length, writes.map((call) => `${call.method} ${call.path}`).join("\n")).toBeLessThanOrEqual(3);
    expect(kube.stored<V1Pod>(podPath("tune-train-1"))?.spec?.containers[0]?.env?.find((variable) => variable.name === "KUBETUNE_PROGRESS_TOKEN_FILE")?.value).toBe("/var/run/secrets/kubetune.io/progress/token");
  });

  it("reconciles a job from its own pods (an index by owner), never scanning the caches", async () => {
    const kube = new FakeKube();
    for (const name of ["a", "b", "c"]) await kube.create(jobPath(), manifest(name));
    await start(kube);
    await until("three trainer pods", () => kube.storedIn<V1Pod>(podPath()).length === 3 || undefined);
    const scans = [...controller!.jobs, ...controller!.pods].map((informer) => vi.spyOn(informer, "list"));
    const before = controller!.reconciles;
    await kube.update(podPath("b-train-1"), (pod) => {
      (pod as V1Pod).status = { phase: "Running" };
    });
    await until("a reconcile of b", () => controller!.reconciles > before || undefined);
    await until("b Running/Training", () => kube.stored<FineTuneJob>(jobPath("b"))?.status?.conditions?.some((c) => c.reason === "Training") || undefined);
    expect(scans.reduce((sum, spy) => sum + spy.mock.calls.length, 0)).toBe(0);
    expect(controller!.podsOf(kube.stored<FineTuneJob>(jobPath("b"))!).map((pod) => pod.metadata?.name)).toEqual(["b-train-1"]);
  });

  it("keeps kubetune_jobs by phase from cache events: a deleted job leaves no count behind", async () => {
    const kube = new FakeKube();
    // Jobs that end without a pod (refused: a pod in a cluster cannot read a local path): nothing but the delete itself tells of their going.
    await kube.create(jobPath(), manifest("a", { dataset: { train: "local/train.jsonl" } }));
    await kube.create(jobPath(), manifest("b", { dataset: { train: "local/train.jsonl" } }));
    await start(kube);
    const count = async (phase: string) => (await metrics.jobs.get()).values.find((value) => value.labels.namespace === namespace && value.labels.phase === phase)?.value;
    await until("two Failed", async () => ((await count("Failed")) === 2 ? true : undefined));
    await kube.delete(jobPath("a"));
    await until("one Failed", async () => ((await count("Failed")) === 1 ? true : undefined));
    await kube.delete(jobPath("b"));
    // Its last job gone, the namespace has no series at all (no zeros left for ever).
    await until("no series", async () => ((await metrics.jobs.get()).values.some((value) => value.labels.namespace === namespace) ? undefined : true));
  });
});
