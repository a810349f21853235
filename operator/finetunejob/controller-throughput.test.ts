import type { V1Pod } from "@kubernetes/client-node";
import { afterEach, describe, expect, it } from "vitest";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { resourcePath, type KubeClient } from "../../kube/client.ts";
import { FakeKube } from "../../kube/fake.ts";
import { OperatorMetrics } from "../metrics.ts";
import { EventRecorder } from "../runtime/events.ts";
import { FineTuneJobController } from "./controller.ts";
import { FINALIZER } from "./pods.ts";

// How a new job's writes are sent: its pod, then its status (no finalizer: the pods are the garbage collector's to
// delete with the job), and what happens when a pod under its name is left from an earlier job of the same name.

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

describe("a new job's first writes", () => {
  let controller: FineTuneJobController | undefined;
  afterEach(async () => {
    await controller?.stop();
    controller = undefined;
  });

  async function start(kube: FakeKube, client: KubeClient, finalizers?: string[]): Promise<void> {
    await kube.create(jobPath(), {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: "tune", namespace, ...(finalizers ? { finalizers } : {}) },
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

  it("writes a new job's pod, then its status, and nothing else on the job: no finalizer", async () => {
    const kube = new FakeKube();
    await start(kube, kube.asClient());
    await until("status.attempts", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    await sleep(300);
    const job = kube.stored<FineTuneJob>(jobPath("tune"))!;
    expect(job.metadata.finalizers).toBeUndefined();
    expect(job.status?.phase).toBe("Running");
    // After the test's own create of the job: the operator's writes, and its PodCreated Event (written in the background).
    const writes = kube.calls.filter((call) => call.method !== "GET" && call.path !== jobPath()).map((call) => `${call.method} ${call.path}`);
    expect(writes.filter((write) => !write.endsWith("/events"))).toEqual([`POST ${podPath()}`, `PATCH ${jobPath("tune")}/status`]);
    expect(writes.filter((write) => write.endsWith("/events"))).toHaveLength(1);
    // The garbage collector deletes the pod with the job: it names the job as its controlling owner, and blocks the
    // job's foreground deletion until it is gone.
    expect(kube.storedIn<V1Pod>(podPath())[0]?.metadata?.ownerReferences).toEqual([
      { apiVersion: API_VERSION, kind: KIND, name: "tune", uid: job.metadata.uid, controller: true, blockOwnerDeletion: true },
    ]);
  });

  it("takes off the finalizer that an earlier operator version put on a job, then writes status on that write's version", async () => {
    const kube = new FakeKube();
    await start(kube, kube.asClient(), [FINALIZER, "example.com/keep"]);
    await until("status.attempts", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    await sleep(300);
    expect(kube.stored<FineTuneJob>(jobPath("tune"))!.metadata.finalizers).toEqual(["example.com/keep"]);
    // Conditional writes, the status on the version the finalizer's removal made: no conflict, nothing written twice.
    const jobWrites = kube.calls.filter((call) => call.method === "PATCH" && call.path.startsWith(jobPath("tune")));
    expect(jobWrites.map((call) => call.path)).toEqual([jobPath("tune"), `${jobPath("tune")}/status`]);
    expect(podCreations(kube)).toBe(1);
  });

  it("waits for the pod left by an earlier job of the same name, deleting it conditionally on its uid, then starts its own", async () => {
    const kube = new FakeKube();
    // The earlier job "tune" was deleted; its trainer pod is still terminating (a finalizer stands for the kubelet's
    // grace period), and the garbage collector has not got to it.
    const earlierUid = "uid-of-the-earlier-tune";
    await kube.create(podPath(), {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name: "tune-train-1",
        namespace,
        finalizers: ["test.kubetune.io/terminating"],
        labels: { "kubetune.io/job-name": "tune", "app.kubernetes.io/component": "trainer", "kubetune.io/attempt": "1" },
        ownerReferences: [{ apiVersion: API_VERSION, kind: KIND, name: "tune", uid: earlierUid, controller: true, blockOwnerDeletion: true }],
      },
      spec: { containers: [{ name: "trainer", image: "old" }] },
    } as V1Pod);
    await start(kube, kube.asClient());
    await until("the wait in status", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.conditions?.some((condition) => condition.reason === "EarlierJobPodTerminating") ?? false);
    const deletes = kube.calls.filter((call) => call.method === "DELETE");
    expect(deletes).toEqual([{ method: "DELETE", path: podPath("tune-train-1"), body: { preconditions: { uid: kube.stored<V1Pod>(podPath("tune-train-1"))!.metadata!.uid } } }]);
    const waiting = kube.stored<FineTuneJob>(jobPath("tune"))!;
    expect(waiting.status?.phase).not.toBe("Failed");
    expect(waiting.status?.conditions?.find((condition) => condition.type === "Running")?.message).toContain(earlierUid);
    // While it terminates, nothing starts under its name.
    await sleep(300);
    expect(kube.stored<V1Pod>(podPath("tune-train-1"))!.metadata!.ownerReferences![0]!.uid).toBe(earlierUid);
    // The kubelet lets it go: its deletion wakes the job, whose own first attempt starts.
    await kube.update(podPath("tune-train-1"), (pod) => {
      (pod.metadata as { finalizers?: string[] }).finalizers = [];
    });
    await kube.delete(podPath("tune-train-1"));
    await until("the job's own pod", () => kube.stored<V1Pod>(podPath("tune-train-1"))?.metadata?.ownerReferences?.[0]?.uid === waiting.metadata.uid);
    await until("status.attempts", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    expect(kube.stored<FineTuneJob>(jobPath("tune"))!.status?.conditions?.find((condition) => condition.type === "Running")?.reason).toBe("PodCreated");
  });

  it("does not start a reconcile from a version of the job that its own write replaced (no stale write, no conflict)", async () => {
    const kube = new FakeKube();
    // The job cache lags: it shows the job as created while the status write lands, and the pod's event wakes the
    // job's reconcile meanwhile.
    kube.holdWatch("finetunejobs");
    await start(kube, kube.asClient());
    await until("status.attempts", () => kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts === 1);
    await sleep(300);
    kube.releaseWatch("finetunejobs");
    await sleep(300);
    const jobWrites = kube.calls.filter((call) => call.method === "PATCH" && call.path.startsWith(jobPath("tune")));
    expect(jobWrites.map((call) => call.path)).toEqual([`${jobPath("tune")}/status`]);
    expect(podCreations(kube)).toBe(1);
  });
});
