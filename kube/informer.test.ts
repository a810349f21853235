import { describe, expect, it } from "vitest";
import type { KubeClient, KubeObject, WatchEventType } from "./client.ts";
import { Informer, keepOnlyFields } from "./informer.ts";

describe("Informer", () => {
  it("backs off when every watch ends at once with an error other than 410", async () => {
    let watches = 0;
    const client = {
      list: async () => ({ items: [], metadata: { resourceVersion: "1" } }),
      watch: async (_path: string, _query: unknown, onEvent: (type: WatchEventType, object: unknown) => void) => {
        watches += 1;
        await new Promise((resolve) => setImmediate(resolve));
        onEvent("ERROR", { code: 500, message: "etcdserver: leader changed" });
      },
    } as unknown as KubeClient;
    const informer = new Informer(client, { path: "/api/v1/pods" });
    await informer.start();
    await new Promise((resolve) => setTimeout(resolve, 400));
    await informer.stop();
    // 250-500 ms after the first error, then 500-1000 ms: at most two watches in 400 ms, where a hot loop makes thousands.
    expect(watches).toBeLessThanOrEqual(3);
  });
});

type Pod = KubeObject & { spec?: { nodeName?: string; containers?: unknown[] }; status?: { phase?: string } };

/** A client whose list returns `items` and whose watches are scripted by the test, one function per watch. */
function scriptedClient(items: Pod[], watches: ((onEvent: (type: WatchEventType, object: Pod) => void, signal: AbortSignal, onOpen: () => void) => Promise<void>)[]) {
  let calls = 0;
  const client = {
    list: async () => ({ items: structuredClone(items), metadata: { resourceVersion: "10" } }),
    watch: (_path: string, _query: unknown, onEvent: (type: WatchEventType, object: Pod) => void, signal: AbortSignal, onOpen: () => void) => {
      const script = watches[Math.min(calls, watches.length - 1)]!;
      calls += 1;
      return script(onEvent, signal, onOpen);
    },
  } as unknown as KubeClient;
  return { client, watchCalls: () => calls };
}

/** A watch that opens and then stays silent until aborted: a dead connection the kernel has not noticed. */
const silentWatch = (_onEvent: unknown, signal: AbortSignal, onOpen: () => void) =>
  new Promise<void>((resolve) => {
    onOpen();
    signal.addEventListener("abort", () => resolve(), { once: true });
  });

const pod = (name: string, owner: string, rv = "1"): Pod => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: {
    name,
    namespace: "ns",
    resourceVersion: rv,
    ownerReferences: [{ apiVersion: "kubetune.io/v1alpha1", kind: "FineTuneJob", name: owner, uid: `uid-${owner}`, controller: true }],
    annotations: { "kubectl.kubernetes.io/last-applied-configuration": "{...}", keep: "me" },
    managedFields: [{ manager: "kubectl", operation: "Update", fieldsV1: { "f:spec": {} } }],
  } as Pod["metadata"],
  spec: { nodeName: "node-1", containers: [{ name: "trainer", env: [{ name: "KUBETUNE_JOB_SPEC", value: "x".repeat(1000) }] }] },
  status: { phase: "Running" },
});

describe("Informer watch liveness", () => {
  it("re-opens a watch that brings no event or bookmark within the idle timeout, and is not ready meanwhile", async () => {
    let openSecond!: () => void;
    let sendOnSecond!: (type: WatchEventType, object: Pod) => void;
    const secondOpened = new Promise<void>((resolve) => (openSecond = resolve));
    const { client, watchCalls } = scriptedClient(
      [],
      [
        silentWatch,
        (onEvent, signal, onOpen) =>
          new Promise<void>((resolve) => {
            sendOnSecond = onEvent;
            // The second watch opens only when the test says: until then the informer has heard nothing for too long.
            void secondOpened.then(onOpen);
            signal.addEventListener("abort", () => resolve(), { once: true });
          }),
      ],
    );
    const logs: string[] = [];
    const informer = new Informer(client, { path: "/api/v1/pods", watchIdleTimeoutSeconds: 0.4, log: (line) => logs.push(line) });
    await informer.start();
    expect(informer.isWatching()).toBe(true);
    await eventually(() => watchCalls() === 2);
    expect(informer.isWatching()).toBe(false);
    expect(logs).toContain("watch /api/v1/pods: no event or bookmark for 0.4s; re-opening it");
    openSecond();
    await eventually(() => informer.isWatching());
    sendOnSecond("ADDED", pod("late", "job"));
    expect(informer.get("ns", "late")?.metadata?.name).toBe("late");
    await informer.stop();
  });

  it("keeps a watch that bookmarks regularly", async () => {
    const { client, watchCalls } = scriptedClient(
      [],
      [
        (onEvent, signal, onOpen) =>
          new Promise<void>((resolve) => {
            onOpen();
            const timer = setInterval(() => onEvent("BOOKMARK", { metadata: { resourceVersion: "11" } }), 100);
            signal.addEventListener("abort", () => (clearInterval(timer), resolve()), { once: true });
          }),
      ],
    );
    const informer = new Informer(client, { path: "/api/v1/pods", watchIdleTimeoutSeconds: 1 });
    await informer.start();
    await new Promise((resolve) => setTimeout(resolve, 2500));
    expect(watchCalls()).toBe(1);
    expect(informer.isWatching()).toBe(true);
    await informer.stop();
  });
});

describe("Informer transforms and indexes", () => {
  it("drops managedFields and kubectl's last-applied copy from every cached object", async () => {
    const { client } = scriptedClient([pod("a", "job")], [silentWatch]);
    const informer = new Informer<Pod>(client, { path: "/api/v1/pods" });
    await informer.start();
    const cached = informer.get("ns", "a")!;
    expect(cached.metadata).not.toHaveProperty("managedFields");
    expect(cached.metadata?.annotations).toEqual({ keep: "me" });
    expect(cached.spec?.containers).toHaveLength(1);
    await informer.stop();
  });

  it("applies the informer's transform to listed and watched objects before handlers see them", async () => {
    let send!: (type: WatchEventType, object: Pod) => void;
    const { client } = scriptedClient([pod("listed", "job")], [(onEvent, signal, onOpen) => ((send = onEvent), silentWatch(onEvent, signal, onOpen))]);
    const handed: Pod[] = [];
    const informer = new Informer<Pod>(client, { path: "/api/v1/pods", transform: keepOnlyFields<Pod>(["status", "spec.nodeName"]) }).on({ add: (object) => handed.push(object), update: (object) => handed.push(object) });
    await informer.start();
    await eventually(() => send !== undefined);
    send("ADDED", pod("watched", "job"));
    send("MODIFIED", { ...pod("watched", "job", "2"), status: { phase: "Succeeded" } });
    for (const object of [...handed, ...informer.list()]) {
      expect(object.spec).toEqual({ nodeName: "node-1" });
      expect(Object.keys(object).sort()).toEqual(["apiVersion", "kind", "metadata", "spec", "status"]);
    }
    expect(informer.get("ns", "watched")?.status?.phase).toBe("Succeeded");
    expect(handed.map((object) => object.metadata?.name)).toEqual(["listed", "watched", "watched"]);
    await informer.stop();
  });

  it("keepOnlyFields keeps the named paths and nothing else", () => {
    const trim = keepOnlyFields<Pod>(["status", "spec.nodeName", "spec.missing"]);
    expect(trim(pod("a", "job"))).toEqual({ apiVersion: "v1", kind: "Pod", metadata: pod("a", "job").metadata, spec: { nodeName: "node-1" }, status: { phase: "Running" } });
    expect(trim({ metadata: { name: "bare" } })).toEqual({ apiVersion: undefined, kind: undefined, metadata: { name: "bare" } });
  });

  it("answers byIndex from an index kept through adds, updates that move an object, and deletes", async () => {
    let send!: (type: WatchEventType, object: Pod) => void;
    const { client } = scriptedClient([pod("a", "job-1"), pod("b", "job-1")], [(onEvent, signal, onOpen) => ((send = onEvent), silentWatch(onEvent, signal, onOpen))]);
    const owners = (object: Pod) => (object.metadata?.ownerReferences ?? []).map((owner) => owner.uid);
    const informer = new Informer<Pod>(client, { path: "/api/v1/pods" });
    await informer.start();
    // Added after the first list: built from what is cached.
    informer.addIndex("owner", owners);
    const names = (uid: string) => informer.byIndex("owner", uid).map((object) => object.metadata?.name).sort();
    expect(names("uid-job-1")).toEqual(["a", "b"]);
    await eventually(() => send !== undefined);
    send("ADDED", pod("c", "job-2"));
    send("MODIFIED", pod("b", "job-2", "2"));
    send("DELETED", pod("a", "job-1", "3"));
    expect(names("uid-job-1")).toEqual([]);
    expect(names("uid-job-2")).toEqual(["b", "c"]);
    expect(() => informer.byIndex("nodes", "x")).toThrow("no index named nodes");
    expect(() => informer.addIndex("owner", owners)).toThrow("an index named owner exists already");
    await informer.stop();
  });
});

async function eventually(condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
