import { isDeepStrictEqual } from "node:util";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type Condition, type FineTuneJob, type FineTuneJobStatus, type Reason } from "../../api/index.ts";
import { ApiError, isNotFound, resourcePath, type KubeClient, type KubeObject } from "../../kube/client.ts";
import { Informer } from "../../kube/informer.ts";
import type { EventRecorder } from "../runtime/events.ts";
import { WorkQueue } from "../runtime/workqueue.ts";

// kubetune as an external Kueue integration (docs/queues.md, "Kueue protocol"): one Workload per
// FineTuneJob whose spec.queueName is not a FineTuneQueue, owned by the job; its admission is
// mirrored onto the job's Admitted condition (and the flavors' node labels and tolerations onto
// status.admission, which the job controller adds to the trainer pod); an eviction takes the
// admission back, and once the job controller has stopped the trainer (SIGTERM: it checkpoints)
// and the job shows Queued, the Workload's quota reservation is cleared in one status write.

export const KUEUE_GROUP = "kueue.x-k8s.io";
export const KUEUE_VERSION = "v1beta2";
/** Kueue's finalizer on Workloads: removed by the integration once the job no longer runs. */
export const RESOURCE_IN_USE = "kueue.x-k8s.io/resource-in-use";
export const LABEL_JOB_UID = "kueue.x-k8s.io/job-uid";
/** Label on a job naming a WorkloadPriorityClass, as on Kueue's own integrations. */
export const LABEL_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class";
export const POD_SET = "trainer";
const GPU = "nvidia.com/gpu";

export interface WorkloadCondition {
  type: string;
  status: "True" | "False" | "Unknown";
  reason: string;
  message: string;
  lastTransitionTime?: string;
  observedGeneration?: number;
}

export interface Workload extends KubeObject {
  spec: { active?: boolean; queueName?: string; priority?: number; priorityClassRef?: { group: string; kind: string; name: string }; podSets: unknown[] };
  status?: {
    conditions?: WorkloadCondition[];
    admission?: { clusterQueue: string; podSetAssignments: { name: string; flavors?: Record<string, string>; count?: number }[] } | null;
    admissionChecks?: { name: string; state: string; podSetUpdates?: { name: string; nodeSelector?: Record<string, string>; tolerations?: unknown[] }[] }[];
  };
}

interface ResourceFlavor {
  spec?: { nodeLabels?: Record<string, string>; tolerations?: NonNullable<NonNullable<FineTuneJobStatus["admission"]>["tolerations"]> };
}

export interface KueueControllerOptions {
  client: KubeClient;
  /** The job caches, shared with the other controllers. */
  jobs: Informer<FineTuneJob>[];
  /** Namespaces to watch Workloads in (all when empty), as the job caches. */
  namespaces: string[];
  /** True for a queue name that is a FineTuneQueue: the built-in controller admits those jobs, not Kueue. */
  isBuiltInQueue: (name: string) => boolean;
  events: EventRecorder;
  log: (message: string) => void;
}

const BY_OWNER = "owner";

/** The name of a job's Workload: readable, and distinct for a job re-created under the same name. */
export function workloadName(job: FineTuneJob): string {
  return `ftj-${job.metadata.name!.slice(0, 240)}-${job.metadata.uid!.slice(0, 5)}`;
}

export class KueueController {
  readonly workloads: Informer<Workload>[];
  private readonly queue = new WorkQueue({ baseMs: 100, maxMs: 30_000 });
  private workers: Promise<void>[] = [];
  private running = false;

  constructor(private readonly options: KueueControllerOptions) {
    const scopes = options.namespaces.length ? options.namespaces : [undefined];
    this.workloads = scopes.map((namespace) => new Informer<Workload>(options.client, { path: resourcePath({ group: KUEUE_GROUP, version: KUEUE_VERSION, plural: "workloads", namespace }), log: options.log }));
    const enqueueOwner = (workload: Workload) => this.enqueueOwner(workload);
    for (const informer of this.workloads) {
      informer.addIndex(BY_OWNER, (workload) => (workload.metadata?.ownerReferences ?? []).filter((reference) => reference.controller && reference.kind === KIND).map((reference) => `${workload.metadata?.namespace}/${reference.name}`));
      informer.on({ add: enqueueOwner, update: enqueueOwner, delete: enqueueOwner });
    }
    const enqueue = (job: FineTuneJob) => this.queue.add(`${job.metadata.namespace}/${job.metadata.name}`);
    for (const informer of options.jobs) informer.on({ add: enqueue, update: enqueue, delete: enqueue });
  }

  private enqueueOwner(workload: Workload): void {
    const owner = workload.metadata?.ownerReferences?.find((reference) => reference.controller && reference.kind === KIND && reference.apiVersion === API_VERSION);
    if (owner) this.queue.add(`${workload.metadata?.namespace}/${owner.name}`);
  }

  async sync(): Promise<void> {
    await Promise.all(this.workloads.map((informer) => informer.start()));
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    // Workloads whose job went while no operator ran still hold Kueue's finalizer: their reconcile lets them go.
    for (const informer of this.workloads) for (const workload of informer.list()) this.enqueueOwner(workload);
    for (const informer of this.options.jobs) for (const job of informer.list()) if (job.spec?.queueName) this.queue.add(`${job.metadata.namespace}/${job.metadata.name}`);
    this.workers = [this.work(), this.work()];
  }

  async stop(): Promise<void> {
    this.queue.shutDown();
    await Promise.all(this.workers);
    await Promise.all(this.workloads.map((informer) => informer.stop()));
  }

  isHealthy(): boolean {
    return this.workloads.every((informer) => informer.hasSynced() && informer.isWatching());
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      try {
        const requeueAfter = await this.reconcile(key);
        this.queue.forget(key);
        if (requeueAfter !== undefined) this.queue.addAfter(key, requeueAfter * 1000);
      } catch (error) {
        const delay = this.queue.addRateLimited(key);
        if (!(error instanceof ApiError && error.status === 409)) this.options.log(`kueue: job ${key}: reconcile failed, retrying in ${delay}ms: ${(error as Error).message}`);
      } finally {
        this.queue.done(key);
      }
    }
  }

  private job(namespace: string, name: string): FineTuneJob | undefined {
    for (const informer of this.options.jobs) {
      const job = informer.get(namespace, name);
      if (job) return job;
    }
    return undefined;
  }

  private async reconcile(key: string): Promise<number | undefined> {
    const [namespace, name] = key.split("/") as [string, string];
    const job = this.job(namespace, name);
    const workloads = this.workloads.flatMap((informer) => informer.byIndex(BY_OWNER, key));
    const ours = job ? workloads.filter((workload) => workload.metadata?.ownerReferences?.some((reference) => reference.uid === job.metadata.uid)) : [];
    // Workloads of a job that is gone (or of an earlier job of the same name): let them go.
    for (const workload of workloads.filter((each) => !ours.includes(each) || job?.metadata.deletionTimestamp)) await this.release(workload);
    if (!job || job.metadata.deletionTimestamp) return undefined;
    const queueName = job.spec?.queueName;
    const workload = ours[0];
    if (!queueName || this.options.isBuiltInQueue(queueName)) {
      // Not (or no longer) Kueue's: a Workload made while the job named a LocalQueue holds quota for nothing.
      if (workload) {
        await this.release(workload);
        await this.options.client.delete(this.workloadPath(namespace, workload.metadata!.name)).catch(ignoreNotFound);
      }
      return undefined;
    }
    const phase = job.status?.phase;
    if (phase === "Succeeded" || phase === "Failed") {
      if (workload) await this.finish(workload, phase);
      return undefined;
    }
    if (!workload) {
      if (isJobAdmitted(job)) {
        // The Workload went while the job held its admission: stop the trainer first, then queue again.
        await this.writeJob(job, { status: "False", reason: "Preempted", message: "its Kueue Workload was deleted: the trainer stops and the job queues again" }, { queue: null, admission: null });
        return undefined;
      }
      if (job.status?.phase !== undefined && job.status.phase !== "Queued" && job.status.phase !== "Pending") return 2;
      await this.options.client.create(this.workloadPath(namespace), await this.buildWorkload(job, queueName));
      await this.writeJob(job, { status: "False", reason: "Queued", message: `waiting for Kueue to admit Workload ${workloadName(job)} (LocalQueue ${queueName})` }, { queue: null, admission: null });
      return undefined;
    }

    const evicted = conditionOf(workload, "Evicted");
    const reserved = conditionOf(workload, "QuotaReserved")?.status === "True" || Boolean(workload.status?.admission);
    if (evicted?.status === "True" && reserved) {
      if (isJobAdmitted(job)) {
        const message = `Kueue evicted Workload ${workload.metadata!.name} (${evicted.reason}): ${evicted.message}; the trainer saves a checkpoint and the job waits to be admitted again`;
        await this.writeJob(job, { status: "False", reason: "Preempted", message }, { queue: null, admission: null });
        await this.options.events.record(job, "Warning", "Preempted", message);
        return undefined;
      }
      // The job controller shows Queued once no trainer pod is left: only then is the quota given back.
      if (job.status?.phase !== "Queued") return 2;
      await this.finishEviction(workload, evicted);
      return undefined;
    }
    if (conditionOf(workload, "Admitted")?.status === "True" && evicted?.status !== "True") {
      if (isJobAdmitted(job)) return undefined;
      const admission = await this.podAdditions(workload);
      const clusterQueue = workload.status?.admission?.clusterQueue;
      const flavors = [...new Set(Object.values(workload.status?.admission?.podSetAssignments.find((assignment) => assignment.name === POD_SET)?.flavors ?? {}))];
      const message = `admitted by Kueue: Workload ${workload.metadata!.name}, ClusterQueue ${clusterQueue}, flavor ${flavors.join(", ") || "none"}`;
      await this.writeJob(job, { status: "True", reason: "Admitted", message }, { queue: null, admission });
      await this.options.events.record(job, "Normal", "Admitted", message);
      return undefined;
    }
    if (isJobAdmitted(job)) {
      // The reservation went without an eviction we saw: stop as for one.
      await this.writeJob(job, { status: "False", reason: "Preempted", message: `Kueue no longer admits Workload ${workload.metadata!.name}: the trainer stops and the job waits to be admitted again` }, { queue: null, admission: null });
      return undefined;
    }
    const pending = conditionOf(workload, "QuotaReserved");
    const waitReason = pending?.status === "False" && pending.message ? `Kueue: ${pending.message}` : `waiting for Kueue to admit Workload ${workload.metadata!.name} (LocalQueue ${queueName})`;
    const inactive = workload.spec.active === false ? "; the Workload is deactivated (spec.active: false)" : "";
    await this.writeJob(job, { status: "False", reason: "Queued", message: `${waitReason}${inactive}` }, { queue: { waitReason: `${waitReason}${inactive}` }, admission: null });
    return undefined;
  }

  private workloadPath(namespace: string, name?: string, subresource?: string): string {
    return resourcePath({ group: KUEUE_GROUP, version: KUEUE_VERSION, plural: "workloads", namespace, name, subresource });
  }

  /** The Workload for a job: one pod set with the trainer's requests, the LocalQueue, and the priority class with its value. */
  private async buildWorkload(job: FineTuneJob, queueName: string): Promise<Workload> {
    const resources = job.spec?.resources ?? {};
    const requests: Record<string, string> = {};
    const limits: Record<string, string> = {};
    if (resources.cpu !== undefined) requests.cpu = String(resources.cpu);
    if (resources.memory !== undefined) requests.memory = limits.memory = String(resources.memory);
    if ((resources.gpus ?? 0) > 0) requests[GPU] = limits[GPU] = String(resources.gpus);
    const priority = await this.priorityOf(job);
    return {
      apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`,
      kind: "Workload",
      metadata: {
        name: workloadName(job),
        namespace: job.metadata.namespace,
        labels: { [LABEL_JOB_UID]: job.metadata.uid! },
        finalizers: [RESOURCE_IN_USE],
        ownerReferences: [{ apiVersion: API_VERSION, kind: KIND, name: job.metadata.name!, uid: job.metadata.uid!, controller: true, blockOwnerDeletion: true }],
      },
      spec: {
        queueName,
        ...priority,
        podSets: [
          {
            name: POD_SET,
            count: 1,
            template: {
              spec: {
                restartPolicy: "Never",
                ...(resources.nodeSelector ? { nodeSelector: resources.nodeSelector } : {}),
                ...(resources.tolerations ? { tolerations: resources.tolerations } : {}),
                ...(resources.priorityClassName ? { priorityClassName: resources.priorityClassName } : {}),
                containers: [{ name: "trainer", image: job.spec?.trainer?.image ?? "kubetune-trainer", resources: { ...(Object.keys(requests).length ? { requests } : {}), ...(Object.keys(limits).length ? { limits } : {}) } }],
              },
            },
          },
        ],
      },
    };
  }

  /** As Kueue's ExtractPriority: the job's WorkloadPriorityClass label, else its PriorityClass, with the class's value. */
  private async priorityOf(job: FineTuneJob): Promise<Pick<Workload["spec"], "priority" | "priorityClassRef">> {
    const workloadClass = job.metadata.labels?.[LABEL_PRIORITY_CLASS];
    if (workloadClass) {
      const value = await this.options.client.get<{ value: number }>(resourcePath({ group: KUEUE_GROUP, version: KUEUE_VERSION, plural: "workloadpriorityclasses", name: workloadClass })).then((found) => found.value);
      return { priorityClassRef: { group: KUEUE_GROUP, kind: "WorkloadPriorityClass", name: workloadClass }, priority: value };
    }
    const podClass = job.spec?.resources?.priorityClassName;
    if (podClass) {
      const value = await this.options.client.get<{ value: number }>(resourcePath({ group: "scheduling.k8s.io", version: "v1", plural: "priorityclasses", name: podClass })).then((found) => found.value);
      return { priorityClassRef: { group: "scheduling.k8s.io", kind: "PriorityClass", name: podClass }, priority: value };
    }
    return {};
  }

  /** The node labels and tolerations of the assigned flavors, then any admission check's podSetUpdates (podset.FromAssignment). */
  private async podAdditions(workload: Workload): Promise<NonNullable<FineTuneJobStatus["admission"]>> {
    const assignment = workload.status?.admission?.podSetAssignments.find((each) => each.name === POD_SET);
    const nodeSelector: Record<string, string> = {};
    const tolerations: NonNullable<NonNullable<FineTuneJobStatus["admission"]>["tolerations"]> = [];
    for (const flavor of new Set(Object.values(assignment?.flavors ?? {}))) {
      const object = await this.options.client.get<ResourceFlavor>(resourcePath({ group: KUEUE_GROUP, version: KUEUE_VERSION, plural: "resourceflavors", name: flavor }));
      Object.assign(nodeSelector, object.spec?.nodeLabels ?? {});
      tolerations.push(...(object.spec?.tolerations ?? []));
    }
    for (const check of workload.status?.admissionChecks ?? []) {
      for (const update of check.podSetUpdates ?? []) {
        if (update.name !== POD_SET) continue;
        Object.assign(nodeSelector, update.nodeSelector ?? {});
        tolerations.push(...((update.tolerations ?? []) as typeof tolerations));
      }
    }
    return { ...(Object.keys(nodeSelector).length ? { nodeSelector } : {}), ...(tolerations.length ? { tolerations } : {}) };
  }

  /** The job framework's step 6, in one status write: Requeued, QuotaReserved=False (Pending), admission removed, Admitted=False. */
  private async finishEviction(workload: Workload, eviction: WorkloadCondition): Promise<void> {
    const generation = workload.metadata!.generation;
    let conditions = workload.status?.conditions ?? [];
    conditions = setCondition(conditions, { type: "QuotaReserved", status: "False", reason: "Pending", message: eviction.message, observedGeneration: generation });
    conditions = setCondition(conditions, { type: "Admitted", status: "False", reason: "NoReservation", message: "The workload has no reservation", observedGeneration: generation });
    const requeue = eviction.reason === "Preempted" || eviction.reason === "NodeFailures";
    conditions = setCondition(conditions, { type: "Requeued", status: requeue ? "True" : "False", reason: eviction.reason, message: eviction.message, observedGeneration: generation });
    await this.options.client.patch(this.workloadPath(workload.metadata!.namespace!, workload.metadata!.name, "status"), { metadata: { resourceVersion: workload.metadata!.resourceVersion }, status: { admission: null, conditions } });
  }

  /** workload.Finish: Finished=True with the job's result, then the finalizer goes and Kueue releases the quota. */
  private async finish(workload: Workload, phase: "Succeeded" | "Failed"): Promise<void> {
    if (conditionOf(workload, "Finished")?.status !== "True") {
      const conditions = setCondition(workload.status?.conditions ?? [], { type: "Finished", status: "True", reason: phase, message: `the FineTuneJob ${phase === "Succeeded" ? "succeeded" : "failed"}`, observedGeneration: workload.metadata!.generation });
      const updated = await this.options.client.patch<Workload>(this.workloadPath(workload.metadata!.namespace!, workload.metadata!.name, "status"), { metadata: { resourceVersion: workload.metadata!.resourceVersion }, status: { conditions } });
      workload = updated;
    }
    await this.release(workload);
  }

  /** Removes Kueue's resource-in-use finalizer, conditional on the version read. */
  private async release(workload: Workload): Promise<void> {
    const finalizers = workload.metadata?.finalizers ?? [];
    if (!finalizers.includes(RESOURCE_IN_USE)) return;
    await this.options.client
      .patch(this.workloadPath(workload.metadata!.namespace!, workload.metadata!.name), [
        { op: "test", path: "/metadata/resourceVersion", value: workload.metadata!.resourceVersion },
        { op: "replace", path: "/metadata/finalizers", value: finalizers.filter((entry) => entry !== RESOURCE_IN_USE) },
      ], "json")
      .catch((error: unknown) => {
        // A failed test operation (422): the Workload changed since the cache read it (Kueue writes it too); retry on the fresh copy.
        if (error instanceof ApiError && error.status === 422) throw new ApiError(409, "Conflict", `Workload ${workload.metadata!.name} changed; retrying`);
        ignoreNotFound(error);
      });
  }

  /** Sets the job's Admitted condition, status.queue and status.admission, only when they change, guarded by the resourceVersion read. */
  private async writeJob(job: FineTuneJob, admitted: { status: "True" | "False"; reason: Reason; message: string }, fields: { queue: { waitReason: string } | null; admission: FineTuneJobStatus["admission"] | null }): Promise<void> {
    const now = new Date();
    const existing = job.status?.conditions ?? [];
    const before = existing.find((condition) => condition.type === "Admitted");
    const condition: Condition = { type: "Admitted", ...admitted, observedGeneration: job.metadata.generation, lastTransitionTime: before && before.status === admitted.status ? before.lastTransitionTime : now.toISOString() };
    const conditions = before ? existing.map((entry) => (entry.type === "Admitted" ? condition : entry)) : [...existing, condition];
    const patch: Record<string, unknown> = {};
    if (!isDeepStrictEqual(existing, conditions)) patch.conditions = conditions;
    for (const field of ["queue", "admission"] as const) {
      const want = fields[field];
      const have = job.status?.[field];
      if (want === null ? have !== undefined : !isDeepStrictEqual(have, want)) patch[field] = want;
    }
    if (Object.keys(patch).length === 0) return;
    await this.options.client.patch(resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace: job.metadata.namespace, name: job.metadata.name, subresource: "status" }), {
      metadata: { resourceVersion: job.metadata.resourceVersion },
      status: patch,
    });
  }
}

function conditionOf(workload: Workload, type: string): WorkloadCondition | undefined {
  return workload.status?.conditions?.find((condition) => condition.type === type);
}

function isJobAdmitted(job: FineTuneJob): boolean {
  return job.status?.conditions?.some((condition) => condition.type === "Admitted" && condition.status === "True") ?? false;
}

/** Replaces a condition; lastTransitionTime moves only when the status changes, in whole seconds as metav1.Time. */
function setCondition(conditions: WorkloadCondition[], next: Omit<WorkloadCondition, "lastTransitionTime">): WorkloadCondition[] {
  const existing = conditions.find((condition) => condition.type === next.type);
  const lastTransitionTime = existing && existing.status === next.status && existing.lastTransitionTime ? existing.lastTransitionTime : new Date().toISOString().replace(/\.\d+Z$/, "Z");
  return [...conditions.filter((condition) => condition.type !== next.type), { ...next, lastTransitionTime }];
}

function ignoreNotFound(error: unknown): void {
  if (!isNotFound(error)) throw error;
}
