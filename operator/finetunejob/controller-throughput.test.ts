import type { V1Pod } from "@kubernetes/client-node";
import { afterEach, describe, expect, it } from "vitest";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { ApiError, resourcePath, type KubeClient } from "../../kube/client.ts";
import { FakeKube } from "../../kube/fake.ts";
import { OperatorMetrics } from "../metrics.ts";
import { EventRecorder } from "../runtime/events.ts";
import { FineTuneJobController } from "./controller.ts";
import { FINALIZER } from "./pods.ts";

// How a new job's writes are sent: its finalizer and its first pod together, the status after both.

const namespace = "team-a";
const jobPath = (name?: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
const podPath = (name?: string) => resourcePath({ group: "", version: "v1", plural: "pods", namespace, name });

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** The fake API server, with the job's finalizer patch handed to `onFinalizerPatch` first. */
function interceptFinalizer(kube: FakeKube, onFinalizerPatch: () => Promise<void>): KubeClient {
  return new Proxy(kube, {
    get(target, property, receiver) {
      if (property === "patch")
        return async (path: string, body: unknown, type?: "merge" | "json") => {
          if (path === jobPath("tune") && type === "json") await onFinalizerPatch();
          return target.patch(path, body, type);
        };
      const value = Reflect.get(target, property, receiver) as unknown;
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  }) as unknown as KubeClient;
}

describe("a new job's first writes", () => {
  let controller: FineTuneJobController | undefined;
  afterEach(async () => {
    await controller?.stop();
    controller = undefined;
  });

  async function start(kube: FakeKube, client: KubeClient): Promise<void> {
    await kube.create(jobPath(), {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: "tune", namespace },
      spec: { baseModel: { uri: "s3://models/tiny" }, dataset: { train: "s3://data/train.jsonl" }, method: { type: "lora" }, output: { uri: "s3://out/tune" } },
    } as FineTuneJob);
    controller = new FineTuneJobController({
      client,
      settings: { defaultImage: "kubetune-trainer:test", progressUrl: "https://operator:8443", terminationGraceSeconds: 30, preflight: false, imagePullTimeoutSeconds: 60, unschedulableTimeoutSeconds: 60, retryBackoffBaseSeconds: 10, retryBackoffMaxSeconds: 300 },
      metrics: new OperatorMetrics(),
      events: new EventRecorder(client, "test"),
      namespaces: [namespace],
      concurrency: 1,
      log: () => {},
    });
    await controller.sync();
    controller.start();
  }

  const podCreations = (kube: FakeKube) => kube.calls.filter((call) => call.method === "POST" && call.path === podPath()).length;

  it("sends the finalizer and the first pod together, then the status on the finalizer's version", async () => {
    const kube = new FakeKube();
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    await start(kube, interceptFinalizer(kube, () => held));
    // The finalizer patch is held: the pod is created meanwhile (one after the other, it would wait for ever).
    await until("the pod", () => podCreations(kube) === 1);
    expect(kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts).toBeUndefined();
    release();
    await until("status.attempts", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    const job = kube.stored<FineTuneJob>(jobPath("tune"))!;
    expect(job.metadata.finalizers).toEqual([FINALIZER]);
    expect(job.status?.phase).toBe("Running");
    expect(kube.storedIn<V1Pod>(podPath()).map((pod) => pod.metadata?.name)).toEqual(["tune-train-1"]);
  });

  it("does not start a reconcile from a version of the job that its own write replaced (no stale write, no conflict)", async () => {
    const kube = new FakeKube();
    // The job cache lags: it shows the job as created while the finalizer and status writes land, and the pod's event
    // wakes the job's reconcile meanwhile.
    kube.holdWatch("finetunejobs");
    await start(kube, kube.asClient());
    await until("status.attempts", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    await sleep(300);
    kube.releaseWatch("finetunejobs");
    await sleep(300);
    const jobWrites = kube.calls.filter((call) => call.method === "PATCH" && call.path.startsWith(jobPath("tune")));
    expect(jobWrites.map((call) => call.path)).toEqual([jobPath("tune"), `${jobPath("tune")}/status`]);
    expect(podCreations(kube)).toBe(1);
  });

  it("fails the reconcile when the finalizer patch fails, and the next one adopts the pod made meanwhile (no second pod)", async () => {
    const kube = new FakeKube();
    let failures = 1;
    await start(
      kube,
      interceptFinalizer(kube, async () => {
        // The job changed between the cache's read and the patch: its test operation fails.
        if (failures-- > 0) throw new ApiError(422, "Invalid", "the server rejected our request: testing value /metadata/resourceVersion failed");
      }),
    );
    await until("status.attempts", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    await sleep(300);
    const job = kube.stored<FineTuneJob>(jobPath("tune"))!;
    expect(job.metadata.finalizers).toEqual([FINALIZER]);
    expect(job.status).toMatchObject({ phase: "Running", attempts: 1 });
    expect(kube.storedIn<V1Pod>(podPath()).map((pod) => pod.metadata?.name)).toEqual(["tune-train-1"]);
    expect(podCreations(kube)).toBe(1);
  });
});
