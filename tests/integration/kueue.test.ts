import { randomBytes } from "node:crypto";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isConflict, isNotFound, resourcePath, type KubeObject } from "../../kube/client.ts";
import { startLocalKueue, type KueueManager } from "../../localcluster/kueue.ts";
import { isAlive, isPortOpen } from "../../localcluster/process.ts";
import { cluster, createNamespace, eventually, kubeClient } from "./harness.ts";

// The Workload protocol that kubetune's Kueue integration follows (docs/queues.md, "Kueue
// protocol"), played by hand against a real Kueue manager: what Kueue does on its side of it.

const GROUP = "kueue.x-k8s.io";
const VERSION = "v1beta2";
const GPU = "nvidia.com/gpu";

interface Condition {
  type: string;
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
  lastTransitionTime?: string;
  observedGeneration?: number;
}

interface Workload extends KubeObject {
  spec: { active?: boolean; queueName?: string; podSets: unknown[] };
  status?: {
    conditions?: Condition[];
    admission?: {
      clusterQueue: string;
      podSetAssignments: { name: string; flavors?: Record<string, string>; resourceUsage?: Record<string, string>; count?: number }[];
    } | null;
  };
}

const client = kubeClient();
const suffix = randomBytes(3).toString("hex");
const flavor = `gpu-flavor-${suffix}`;
const clusterQueue = `gpus-${suffix}`;
const localQueue = "team-queue";
/** WorkloadPriorityClasses, lowest first. */
const priorityClasses = { [`low-${suffix}`]: 100, [`high-${suffix}`]: 1000 };
let namespace: string;
let kueue: KueueManager | undefined;

const clusterPath = (plural: string, name?: string) => resourcePath({ group: GROUP, version: VERSION, plural, name });
const workloadPath = (name?: string, subresource?: string) => resourcePath({ group: GROUP, version: VERSION, plural: "workloads", namespace, name, subresource });

function condition(workload: Workload, type: string): Condition | undefined {
  return workload.status?.conditions?.find((candidate) => candidate.type === type);
}

async function getWorkload(name: string): Promise<Workload> {
  return client.get<Workload>(workloadPath(name));
}

/**
 * A Workload as kubetune's operator will create it: one pod set with the trainer's requests,
 * the LocalQueue's name, and the priority class with its value, as Kueue's ExtractPriority sets them.
 */
async function createWorkload(name: string, gpus: number, priorityClass?: { name: string; value: number }): Promise<Workload> {
  return client.create<Workload>(workloadPath(), {
    apiVersion: `${GROUP}/${VERSION}`,
    kind: "Workload",
    metadata: { name, namespace },
    spec: {
      queueName: localQueue,
      ...(priorityClass && {
        priorityClassRef: { group: GROUP, kind: "WorkloadPriorityClass", name: priorityClass.name },
        priority: priorityClass.value,
      }),
      podSets: [
        {
          name: "trainer",
          count: 1,
          template: {
            spec: {
              restartPolicy: "Never",
              containers: [
                {
                  name: "trainer",
                  image: "kubetune/trainer:test",
                  resources: { requests: { cpu: "1", memory: "1Gi", [GPU]: String(gpus) }, limits: { [GPU]: String(gpus) } },
                },
              ],
            },
          },
        },
      ],
    },
  });
}

/** Waits until Kueue has admitted the Workload, and returns it. */
async function admitted(name: string): Promise<Workload> {
  return eventually(
    `Kueue to admit Workload ${name}`,
    async () => {
      const workload = await getWorkload(name);
      return condition(workload, "Admitted")?.status === "True" ? workload : undefined;
    },
    60_000,
  );
}

/** Waits until Kueue has tried the Workload and left it pending, and returns the QuotaReserved condition that says why. */
async function pending(name: string): Promise<Condition> {
  return eventually(
    `Kueue to leave Workload ${name} pending`,
    async () => {
      const reserved = condition(await getWorkload(name), "QuotaReserved");
      return reserved?.status === "False" ? reserved : undefined;
    },
    60_000,
  );
}

/** Waits until Kueue has evicted the Workload, and returns it. */
async function evicted(name: string): Promise<Workload> {
  return eventually(
    `Kueue to evict Workload ${name}`,
    async () => {
      const workload = await getWorkload(name);
      return condition(workload, "Evicted")?.status === "True" ? workload : undefined;
    },
    60_000,
  );
}

/**
 * What the integration does once the evicted job's pods are gone, as Kueue's jobframework does
 * (step 6 of ReconcileGenericJob: SetRequeuedCondition + UnsetQuotaReservationWithCondition, in
 * one status write): drop the admission, QuotaReserved and Admitted false, and Requeued with
 * the eviction's reason, true only after a preemption or node failure.
 */
async function finishEviction(name: string): Promise<void> {
  await patchStatus(name, (status, workload) => {
    const eviction = condition(workload, "Evicted")!;
    const generation = workload.metadata!.generation;
    status.admission = null;
    setCondition(status, { type: "QuotaReserved", status: "False", reason: "Pending", message: eviction.message, observedGeneration: generation });
    setCondition(status, { type: "Admitted", status: "False", reason: "NoReservation", message: "The workload has no reservation", observedGeneration: generation });
    const requeue = eviction.reason === "Preempted" || eviction.reason === "NodeFailures";
    setCondition(status, { type: "Requeued", status: requeue ? "True" : "False", reason: eviction.reason, message: eviction.message, observedGeneration: generation });
  });
}

/**
 * Changes the Workload's status from its current state: a merge patch on /status guarded by the
 * resourceVersion it read (so a write of Kueue's in between is never undone), retried on conflict.
 */
async function patchStatus(name: string, change: (status: NonNullable<Workload["status"]>, workload: Workload) => void): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const workload = await getWorkload(name);
    const status = structuredClone(workload.status ?? {});
    change(status, workload);
    try {
      await client.patch(workloadPath(name, "status"), { metadata: { resourceVersion: workload.metadata!.resourceVersion }, status }, "merge");
      return;
    } catch (error) {
      if (!isConflict(error) || attempt === 5) throw error;
    }
  }
}

function setCondition(status: NonNullable<Workload["status"]>, next: Omit<Condition, "lastTransitionTime">): void {
  const conditions = (status.conditions ?? []).filter((existing) => existing.type !== next.type);
  conditions.push({ ...next, lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, "Z") });
  status.conditions = conditions;
}

/**
 * Deletes what the tests created. Kueue's webhooks put finalizers on the ClusterQueue and the
 * ResourceFlavor, which only the running manager removes: this runs before it stops.
 */
async function deleteQueueObjects(): Promise<void> {
  if (namespace) {
    for (const workload of (await client.list<Workload>(workloadPath())).items) await client.delete(workloadPath(workload.metadata!.name));
    await client.delete(resourcePath({ group: GROUP, version: VERSION, plural: "localqueues", namespace, name: localQueue })).catch(() => undefined);
  }
  for (const name of Object.keys(priorityClasses)) await client.delete(clusterPath("workloadpriorityclasses", name)).catch(() => undefined);
  for (const objectPath of [clusterPath("clusterqueues", clusterQueue), clusterPath("resourceflavors", flavor)]) {
    await client.delete(objectPath).catch(() => undefined);
    await eventually(`${objectPath} to be deleted`, async () => client.get(objectPath).then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)), 60_000);
  }
}

describe("a real Kueue manager beside the test API server", () => {
  beforeAll(async () => {
    // A cold cache builds the manager first (minutes); later runs find it in ~/.cache/kubetune/bin.
    kueue = await startLocalKueue({
      dir: path.join(cluster().dir, `kueue-${suffix}`),
      kubeconfig: cluster().kubeconfig,
      client,
      log: (line) => console.log(`[kueue] ${line}`),
    });
    namespace = await createNamespace("kueue");
    await client.create(clusterPath("resourceflavors"), {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: "ResourceFlavor",
      metadata: { name: flavor },
      spec: {
        nodeLabels: { "kubetune.io/accelerator": "test-gpu" },
        tolerations: [{ key: GPU, operator: "Exists", effect: "NoSchedule" }],
      },
    });
    await client.create(clusterPath("clusterqueues"), {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: "ClusterQueue",
      metadata: { name: clusterQueue },
      spec: {
        namespaceSelector: {},
        preemption: { withinClusterQueue: "LowerPriority" },
        resourceGroups: [
          {
            coveredResources: ["cpu", "memory", GPU],
            flavors: [
              {
                name: flavor,
                resources: [
                  { name: "cpu", nominalQuota: "8" },
                  { name: "memory", nominalQuota: "32Gi" },
                  { name: GPU, nominalQuota: "2" },
                ],
              },
            ],
          },
        ],
      },
    });
    await client.create(resourcePath({ group: GROUP, version: VERSION, plural: "localqueues", namespace }), {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: "LocalQueue",
      metadata: { name: localQueue, namespace },
      spec: { clusterQueue },
    });
    await eventually("the ClusterQueue to become active", async () => {
      const queue = await client.get<{ status?: { conditions?: Condition[] } }>(clusterPath("clusterqueues", clusterQueue));
      return queue.status?.conditions?.some((c) => c.type === "Active" && c.status === "True") ? true : undefined;
    });
  }, 30 * 60_000);

  afterAll(async () => {
    // Only when a test failed before the last one stopped it.
    if (kueue && isAlive(kueue.process.pid)) {
      await deleteQueueObjects().catch((error: unknown) => console.log(`[kueue] cleanup: ${(error as Error).message}`));
      await kueue.stop();
    }
  }, 120_000);

  it("serves its admission webhooks on loopback: the API server has it default and validate", async () => {
    expect(kueue!.version).toBe("v0.17.0");
    const queue = await client.get<KubeObject>(clusterPath("clusterqueues", clusterQueue));
    // Added by Kueue's mutating webhook, not by the controller: proof the API server reached it.
    expect(queue.metadata?.finalizers).toContain("kueue.x-k8s.io/resource-in-use");
    // And its validating webhook rejects what the CRD schema alone would let through.
    await expect(
      client.create(clusterPath("resourceflavors"), {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "ResourceFlavor",
        metadata: { name: `bad-${suffix}` },
        spec: { nodeLabels: { "not a label key!": "x" } },
      }),
    ).rejects.toThrow(/admission webhook "vresourceflavor\.kb\.io" denied the request.*name part must consist/);
  });

  it("admits a Workload within quota and keeps the next one pending until the first finishes", async () => {
    await createWorkload("first", 1);
    const first = await admitted("first");
    expect(condition(first, "QuotaReserved")?.status).toBe("True");
    expect(first.status?.admission?.clusterQueue).toBe(clusterQueue);
    const [assignment] = first.status!.admission!.podSetAssignments;
    expect(assignment!.name).toBe("trainer");
    expect(assignment!.flavors).toEqual({ cpu: flavor, memory: flavor, [GPU]: flavor });
    expect(assignment!.resourceUsage?.[GPU]).toBe("1");

    // 1 + 2 GPUs exceed the quota of 2.
    await createWorkload("second", 2);
    const waiting = await pending("second");
    expect(waiting.reason).toBe("Pending");
    expect(waiting.message).toContain(GPU);
    expect(condition(await getWorkload("second"), "Admitted")?.status).not.toBe("True");

    // What the integration does when its job completes: the Finished condition releases the quota.
    await patchStatus("first", (status) =>
      setCondition(status, { type: "Finished", status: "True", reason: "Succeeded", message: "the FineTuneJob succeeded", observedGeneration: first.metadata!.generation }),
    );
    const second = await admitted("second");
    expect(second.status?.admission?.podSetAssignments[0]!.resourceUsage?.[GPU]).toBe("2");
  });

  it("evicts a deactivated Workload and stops charging its quota at once", async () => {
    // "second" holds both GPUs; "third" waits for one.
    await createWorkload("third", 1);
    await pending("third");

    await client.patch(workloadPath("second"), { spec: { active: false } }, "merge");
    const second = await evicted("second");
    expect(condition(second, "Evicted")?.reason).toBe("Deactivated");
    // The admission stays on the Workload until the integration has stopped the pods...
    expect(condition(second, "QuotaReserved")?.status).toBe("True");
    expect(second.status?.admission?.clusterQueue).toBe(clusterQueue);
    // ...but Kueue no longer counts an inactive Workload against the quota (unlike a
    // preempted one, next test): the waiting Workload is admitted without waiting for that.
    const third = await admitted("third");
    expect(third.status?.admission?.podSetAssignments[0]!.flavors?.[GPU]).toBe(flavor);

    await finishEviction("second");
    const released = await getWorkload("second");
    expect(released.status?.admission).toBeUndefined();
    expect(condition(released, "Requeued")).toMatchObject({ status: "False", reason: "Deactivated" });

    // Reactivated, it queues again (Requeued true) and waits: "third" holds one of the two GPUs.
    await client.patch(workloadPath("second"), { spec: { active: true } }, "merge");
    const requeued = await eventually(
      "Kueue to requeue the reactivated Workload",
      async () => {
        const workload = await getWorkload("second");
        return condition(workload, "Requeued")?.status === "True" ? workload : undefined;
      },
      60_000,
    );
    expect(condition(requeued, "Requeued")?.reason).toBe("Reactivated");
    expect((await pending("second")).message).toContain(GPU);
  });

  it("preempts a lower-priority Workload, whose quota stays reserved until the integration releases it", async () => {
    for (const workload of (await client.list<Workload>(workloadPath())).items) await client.delete(workloadPath(workload.metadata!.name));
    await eventually("the namespace's Workloads to be deleted", async () => ((await client.list<Workload>(workloadPath())).items.length === 0 ? true : undefined));
    for (const [name, value] of Object.entries(priorityClasses)) {
      await client.create(clusterPath("workloadpriorityclasses"), {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "WorkloadPriorityClass",
        metadata: { name },
        value,
      });
    }
    const [low, high] = Object.entries(priorityClasses).map(([name, value]) => ({ name, value }));

    await createWorkload("low", 2, low);
    await admitted("low");
    // Kueue's conversion webhook, on loopback too, serves the Workload at v1beta1, where the
    // priority class is two fields (a CRD without the webhook would return v1beta2's fields).
    const older = await client.get<{ apiVersion: string; spec: Record<string, unknown> }>(`/apis/${GROUP}/v1beta1/namespaces/${namespace}/workloads/low`);
    expect(older.apiVersion).toBe(`${GROUP}/v1beta1`);
    expect(older.spec).toMatchObject({ priorityClassName: low!.name, priorityClassSource: "kueue.x-k8s.io/workloadpriorityclass", priority: 100 });
    expect(older.spec.priorityClassRef).toBeUndefined();
    await createWorkload("high", 1, high);
    const preempted = await evicted("low");
    expect(condition(preempted, "Evicted")?.reason).toBe("Preempted");
    expect(condition(preempted, "Preempted")).toMatchObject({ status: "True", reason: "InClusterQueue" });
    // Preemption only asks: the quota stays charged while the low job's pods may still run, so
    // the high one keeps waiting (its QuotaReserved condition says so)...
    expect(condition(preempted, "QuotaReserved")?.status).toBe("True");
    await pending("high");
    await new Promise((resolve) => setTimeout(resolve, 3000));
    expect(condition(await getWorkload("high"), "Admitted")?.status).not.toBe("True");

    // ...until the integration has stopped them and gives the quota back.
    await finishEviction("low");
    const winner = await admitted("high");
    expect(winner.status?.admission?.podSetAssignments[0]!.resourceUsage?.[GPU]).toBe("1");
    const loser = await getWorkload("low");
    expect(condition(loser, "Requeued")).toMatchObject({ status: "True", reason: "Preempted" });
    expect((await pending("low")).message).toContain(GPU);
  });

  it("stops cleanly: no process, no listening port, no webhook left registered", async () => {
    const manager = kueue!;
    await deleteQueueObjects();
    await manager.stop();
    expect(isAlive(manager.process.pid)).toBe(false);
    for (const port of Object.values(manager.ports)) expect(await isPortOpen(port)).toBe(false);
    const mutating = await client.list<KubeObject>("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations");
    expect(mutating.items.map((item) => item.metadata?.name)).not.toContain("kueue-mutating-webhook-configuration");
  });
});
