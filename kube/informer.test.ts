import v8 from "node:v8";
import { describe, expect, it } from "vitest";
import type { KubeClient, KubeObject, WatchEventType } from "./client.ts";
import { Informer, keepOnlyFields, stripServerBookkeeping, StringInterner } from "./informer.ts";

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

  it("stripServerBookkeeping keeps every other field, and keeps the metadata a fast-properties object", () => {
    // A custom resource's metadata as the API server sends it: keys sorted, managedFields in the middle.
    const object = {
      apiVersion: "kubetune.io/v1alpha1",
      kind: "FineTuneJob",
      metadata: {
        annotations: { "kubectl.kubernetes.io/last-applied-configuration": "{...}", team: "nlp", tier: "gold" },
        creationTimestamp: "2026-01-01T00:00:00Z",
        finalizers: ["kubetune.io/finalizer"],
        generation: 2,
        labels: { app: "x" },
        managedFields: [{ manager: "kubectl", operation: "Update" }],
        name: "job",
        namespace: "ns",
        ownerReferences: [{ apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: "u0" }],
        resourceVersion: "7",
        uid: "u1",
      } as KubeObject["metadata"],
      spec: { a: 1 },
    };
    const stripped = stripServerBookkeeping(structuredClone(object));
    const { managedFields: _managedFields, annotations: _annotations, ...rest } = object.metadata as Record<string, unknown>;
    expect(stripped).toEqual({ ...object, metadata: { ...rest, annotations: { team: "nlp", tier: "gold" } } });
    expect(hasFastProperties(stripped.metadata?.annotations)).toBe(true);
    // Deleting managedFields in place would leave a V8 hash-table object: 380 bytes more per cached job.
    expect(hasFastProperties(stripped.metadata)).toBe(true);
    // Only last-applied among the annotations: no empty annotations object is left.
    const onlyLastApplied = stripServerBookkeeping({ metadata: { name: "a", annotations: { "kubectl.kubernetes.io/last-applied-configuration": "{}" } } });
    expect(onlyLastApplied.metadata).toEqual({ name: "a" });
    expect(hasFastProperties(onlyLastApplied.metadata)).toBe(true);
    // Nothing to strip: the object is handed back as it came.
    const clean = { metadata: { name: "b", annotations: { keep: "me" } } };
    expect(stripServerBookkeeping(clean).metadata).toBe(clean.metadata);
  });

  it("interns the strings of cached objects, in place, and bounds its table", () => {
    const interner = new StringInterner(4, 16);
    // Equal strings built at run time are distinct copies until interned.
    const copy = (text: string) => JSON.parse(JSON.stringify(text)) as string;
    const a = { metadata: { namespace: copy("team-a"), labels: { role: copy("trainer") } }, list: [copy("team-a"), 1, null, { deep: copy("trainer") }], long: copy("x".repeat(17)) };
    const b = { metadata: { namespace: copy("team-a"), labels: { role: copy("trainer") } } };
    const before = structuredClone(a);
    interner.internAll(a);
    interner.internAll(b);
    expect(a).toEqual(before);
    expect(interner.size).toBe(2);
    // Longer strings than the limit are left alone (and not held).
    expect(interner.intern(a.long)).toBe(a.long);
    for (const value of ["one", "two", "three"]) interner.intern(value);
    // Full: the table starts afresh rather than growing.
    expect(interner.size).toBeLessThanOrEqual(4);
    // Objects that are not plain JSON (a Date) are not walked.
    const date = new Date(0);
    expect(interner.internAll({ at: date }).at).toBe(date);
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
  it("keeps byIndex right as a value goes from one object to several and back (one object is stored without a Map)", async () => {
    let send!: (type: WatchEventType, object: Pod) => void;
    const { client } = scriptedClient([pod("a", "job")], [(onEvent, signal, onOpen) => ((send = onEvent), silentWatch(onEvent, signal, onOpen))]);
    const informer = new Informer<Pod>(client, { path: "/api/v1/pods" });
    informer.addIndex("owner", (object) => (object.metadata?.ownerReferences ?? []).map((owner) => owner.uid));
    await informer.start();
    await eventually(() => send !== undefined);
    const cached = () => informer.byIndex("owner", "uid-job").map((object) => `${object.metadata?.name}@${object.metadata?.resourceVersion}`).sort();
    // One object: an update replaces it in place.
    send("MODIFIED", pod("a", "job", "2"));
    expect(cached()).toEqual(["a@2"]);
    // A second and a third; then updates of each.
    send("ADDED", pod("b", "job", "3"));
    send("ADDED", pod("c", "job", "4"));
    send("MODIFIED", pod("a", "job", "5"));
    expect(cached()).toEqual(["a@5", "b@3", "c@4"]);
    // Back down to one, which updates then find; then none.
    send("DELETED", pod("b", "job", "6"));
    send("DELETED", pod("a", "job", "7"));
    expect(cached()).toEqual(["c@4"]);
    send("MODIFIED", pod("c", "job", "8"));
    expect(cached()).toEqual(["c@8"]);
    // A same-named pod in another namespace is another object.
    send("ADDED", { ...pod("c", "job", "9"), metadata: { ...pod("c", "job", "9").metadata, namespace: "other" } });
    expect(cached()).toEqual(["c@8", "c@9"]);
    send("DELETED", pod("c", "job", "10"));
    expect(informer.byIndex("owner", "uid-job").map((object) => object.metadata?.namespace)).toEqual(["other"]);
    send("DELETED", { ...pod("c", "job", "11"), metadata: { ...pod("c", "job", "11").metadata, namespace: "other" } });
    expect(cached()).toEqual([]);
    await informer.stop();
  });
});

/** Whether V8 keeps the object's properties in fast mode (not a hash table): V8's own %HasFastProperties. */
function hasFastProperties(object: unknown): boolean {
  // Natives syntax is read when a function is compiled: enabling it now serves the function made below.
  v8.setFlagsFromString("--allow-natives-syntax");
  return (new Function("object", "return %HasFastProperties(object)") as (object: unknown) => boolean)(object);
}

async function eventually(condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
