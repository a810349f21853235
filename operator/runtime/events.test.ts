import type { V1Pod } from "@kubernetes/client-node";
import { afterEach, describe, expect, it } from "vitest";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { resourcePath, type KubeClient, type KubeObject } from "../../kube/client.ts";
import { FakeKube } from "../../kube/fake.ts";
import { FineTuneJobController } from "../finetunejob/controller.ts";
import { FINALIZER } from "../finetunejob/pods.ts";
import { OperatorMetrics } from "../metrics.ts";
import { EventRecorder } from "./events.ts";

const namespace = "team-a";
const eventsPath = resourcePath({ group: "", version: "v1", plural: "events", namespace });
const jobPath = (name?: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
const podPath = (name?: string) => resourcePath({ group: "", version: "v1", plural: "pods", namespace, name });

interface StoredEvent {
  reason: string;
  message: string;
  count: number;
  involvedObject: { name: string; uid: string };
}

/**
 * The fake API server, with every Event write (create or patch) held until release(): an API
 * server that is slow to answer them, or a flow-control queue that parks them.
 */
function blockingEvents(kube: FakeKube): { client: KubeClient; started: string[]; release(): void } {
  const started: string[] = [];
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const held =
    (method: "create" | "patch") =>
    async (path: string, ...rest: unknown[]): Promise<unknown> => {
      if (path.startsWith(eventsPath)) {
        started.push(`${method} ${path}`);
        await gate;
      }
      return (kube[method] as (...args: unknown[]) => Promise<unknown>).call(kube, path, ...rest);
    };
  const client = new Proxy(kube, {
    get(target, property, receiver) {
      if (property === "create" || property === "patch") return held(property);
      const value = Reflect.get(target, property, receiver) as unknown;
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  }) as unknown as KubeClient;
  return { client, started, release: open };
}

function object(name: string, uid = `uid-${name}`): KubeObject {
  return { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace, uid, resourceVersion: "1" } };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe("EventRecorder", () => {
  let controller: FineTuneJobController | undefined;
  afterEach(async () => {
    await controller?.stop();
    controller = undefined;
  });

  it("does not hold a reconcile behind an Event write: the pod and the status are written while the Event waits", async () => {
    const kube = new FakeKube();
    const blocked = blockingEvents(kube);
    const events = new EventRecorder(blocked.client, "test");
    await kube.create(jobPath(), {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: "tune", namespace, finalizers: [FINALIZER] },
      spec: { baseModel: { uri: "s3://models/tiny" }, dataset: { train: "s3://data/train.jsonl" }, method: { type: "lora" }, output: { uri: "s3://out/tune" } },
    } as FineTuneJob);
    controller = new FineTuneJobController({
      client: blocked.client,
      settings: { defaultImage: "kubetune-trainer:test", progressUrl: "https://operator:8443", terminationGraceSeconds: 30, preflight: false, imagePullTimeoutSeconds: 60, unschedulableTimeoutSeconds: 60, retryBackoffBaseSeconds: 10, retryBackoffMaxSeconds: 300 },
      metrics: new OperatorMetrics(),
      events,
      namespaces: [namespace],
      concurrency: 1,
      log: () => {},
    });
    await controller.sync();
    controller.start();
    // The reconcile created the pod, then wrote status, with its PodCreated Event still unwritten.
    await until("status.attempts", () => (kube.stored<FineTuneJob>(jobPath("tune"))?.status?.attempts ?? 0) >= 1);
    expect(kube.storedIn<V1Pod>(podPath()).map((pod) => pod.metadata?.name)).toEqual(["tune-train-1"]);
    expect(blocked.started).toEqual([`create ${eventsPath}`]);
    expect(kube.storedIn(eventsPath)).toEqual([]);
    blocked.release();
    await events.flush();
    expect(kube.storedIn<StoredEvent>(eventsPath).map((event) => event.reason)).toEqual(["PodCreated"]);
  });

  it("bounds its queue: Events past the limit are dropped, counted, and told in one log line per burst", async () => {
    const kube = new FakeKube();
    const blocked = blockingEvents(kube);
    const lines: string[] = [];
    const events = new EventRecorder(blocked.client, "test", (line) => lines.push(line), { concurrency: 1, queueLimit: 2 });
    // One in flight (held), two waiting, three dropped: one log line for the three.
    for (const name of ["a", "b", "c", "d", "e", "f"]) events.record(object(name), "Normal", "Started", `${name} started`);
    expect(events.dropped).toBe(3);
    expect(lines).toEqual(["the event queue is full (2 waiting): dropped 1 Event (1 in all), the latest Normal Started on team-a/d"]);
    blocked.release();
    await events.flush();
    expect(kube.storedIn<StoredEvent>(eventsPath).map((event) => event.involvedObject.name).sort()).toEqual(["a", "b", "c"]);
    // With room again, Events are taken.
    events.record(object("g"), "Normal", "Started", "g started");
    await events.flush();
    expect(kube.storedIn<StoredEvent>(eventsPath)).toHaveLength(4);
    expect(events.dropped).toBe(3);
    expect(lines).toHaveLength(1);
  });

  it("writes one object's Events in the order recorded, however the writes of others interleave", async () => {
    const kube = new FakeKube();
    const completed: string[] = [];
    // An API server that answers in a random order.
    const client = new Proxy(kube, {
      get(target, property, receiver) {
        if (property === "create")
          return async (path: string, body: KubeObject & { reason: string }) => {
            await sleep(Math.random() * 15);
            const created = await target.create(path, body);
            completed.push(`${body.metadata?.name?.split(".")[0]} ${body.reason}`);
            return created;
          };
        const value = Reflect.get(target, property, receiver) as unknown;
        return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    }) as unknown as KubeClient;
    const events = new EventRecorder(client, "test", undefined, { concurrency: 4 });
    const reasons = ["Created", "PodCreated", "Running", "Retrying", "Completed"];
    for (const reason of reasons) for (const name of ["x", "y", "z"]) events.record(object(name), "Normal", reason, `${name} ${reason}`);
    await events.flush();
    for (const name of ["x", "y", "z"]) {
      expect(completed.filter((line) => line.startsWith(`${name} `))).toEqual(reasons.map((reason) => `${name} ${reason}`));
    }
  });

  it("folds repeats into one Event's count: those waiting into its create, later ones into a count patch", async () => {
    const kube = new FakeKube();
    const blocked = blockingEvents(kube);
    const events = new EventRecorder(blocked.client, "test", undefined, { concurrency: 1 });
    // "a" is being written; three identical Events on "b" wait behind it and become one create.
    events.record(object("a"), "Normal", "Started", "a started");
    for (let i = 0; i < 3; i++) events.record(object("b"), "Warning", "CheckpointUnreadable", "step 20 unreadable");
    blocked.release();
    await events.flush();
    const [b] = kube.storedIn<StoredEvent>(eventsPath).filter((event) => event.involvedObject.name === "b");
    expect(b).toMatchObject({ reason: "CheckpointUnreadable", count: 3 });
    events.record(object("b"), "Warning", "CheckpointUnreadable", "step 20 unreadable");
    await events.flush();
    expect(kube.storedIn<StoredEvent>(eventsPath).filter((event) => event.involvedObject.name === "b")).toEqual([expect.objectContaining({ count: 4 })]);
    expect(kube.calls.filter((call) => call.path.startsWith(eventsPath)).map((call) => call.method)).toEqual(["POST", "POST", "PATCH"]);
  });

  it("writes what waits at stop() and refuses Events after it", async () => {
    const kube = new FakeKube();
    const events = new EventRecorder(kube.asClient(), "test", () => {}, { concurrency: 1 });
    for (const name of ["a", "b", "c"]) events.record(object(name), "Normal", "Started", `${name} started`);
    await events.stop();
    expect(kube.storedIn(eventsPath)).toHaveLength(3);
    events.record(object("d"), "Normal", "Started", "d started");
    await events.flush();
    expect(kube.storedIn(eventsPath)).toHaveLength(3);
    expect(events.dropped).toBe(1);
  });

  it("yields to the reconciles: waits while they are busy, goes once they are not, and never waits past maxYieldMs or a stop", async () => {
    const kube = new FakeKube();
    let busy = true;
    const events = new EventRecorder(kube.asClient(), "test", undefined, { yieldWhile: () => busy, maxYieldMs: 60_000 });
    events.record(object("a"), "Normal", "PodCreated", "created pod a-train-1");
    await sleep(500);
    expect(kube.storedIn(eventsPath)).toEqual([]);
    busy = false;
    await until("the Event once the reconciles are done", () => kube.storedIn(eventsPath).length === 1, 2_000);

    // Busy for ever: the Event still goes once it has waited maxYieldMs.
    const patient = new EventRecorder(kube.asClient(), "test", undefined, { yieldWhile: () => true, maxYieldMs: 400 });
    const recorded = Date.now();
    patient.record(object("b"), "Normal", "PodCreated", "created pod b-train-1");
    await until("the Event after maxYieldMs", () => kube.storedIn(eventsPath).length === 2, 3_000);
    expect(Date.now() - recorded).toBeGreaterThanOrEqual(400);

    // Shutdown writes what waits at once.
    const stopping = new EventRecorder(kube.asClient(), "test", undefined, { yieldWhile: () => true, maxYieldMs: 60_000 });
    stopping.record(object("c"), "Normal", "PodCreated", "created pod c-train-1");
    const stopped = Date.now();
    await stopping.stop();
    expect(kube.storedIn(eventsPath)).toHaveLength(3);
    expect(Date.now() - stopped).toBeLessThan(1_000);
  });
});
