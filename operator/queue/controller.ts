import { isDeepStrictEqual } from "node:util";
import {
  GROUP,
  PLURAL,
  QUEUE_PLURAL,
  VERSION,
  applyQueueDefaults,
  type Condition,
  type FineTuneJob,
  type FineTuneQueue,
  type FineTuneQueueStatus,
  type NamespaceSelector,
  type Reason,
} from "../../api/index.ts";
import { ApiError, isNotFound, resourcePath, type KubeClient } from "../../kube/client.ts";
import { Informer } from "../../kube/informer.ts";
import { parseQuantity } from "../../kube/quantity.ts";
import type { EventRecorder } from "../runtime/events.ts";
import { WorkQueue } from "../runtime/workqueue.ts";
import { decideAdmission, formatCpu, formatMemory, type Demand, type QueueJob, type QueueQuota } from "./admission.ts";
import type { QueueMetrics } from "./metrics.ts";

export interface QueueControllerOptions {
  client: KubeClient;
  /**
   * The job caches to read, shared with the FineTuneJob controller so that the operator keeps one
   * watch per kind. The controller adds its index and handlers to them; whoever made them starts them.
   */
  jobs: Informer<FineTuneJob>[];
  metrics: QueueMetrics;
  events: EventRecorder;
  /**
   * Names that are not FineTuneQueues may be Kueue LocalQueues, which kueue.ts admits: when true
   * this controller leaves jobs naming a missing FineTuneQueue alone instead of saying it is missing.
   */
  kueueEnabled?: boolean;
  log: (message: string) => void;
}

/** The job informers' index of jobs by spec.queueName. */
const BY_QUEUE = "queueName";
/** How long a PriorityClass's value or a namespace's labels are trusted before they are read again. */
const LOOKUP_TTL_MS = 30_000;

/**
 * The FineTuneQueue controller. Like Kueue, it owns admission and nothing else: per queue it
 * reads the queue and the jobs naming it from the caches, asks decideAdmission (pure) what to
 * admit and preempt, and records the answer on each job's Admitted condition and status.queue
 * (position, wait reason), and the totals on the queue's status. The FineTuneJob controller
 * starts a trainer pod only for an admitted job and stops it when the admission is taken back
 * (queueGate). One worker handles one queue at a time, so a queue's decisions never race.
 */
export class QueueController {
  readonly queues: Informer<FineTuneQueue>;
  private readonly queue = new WorkQueue({ baseMs: 100, maxMs: 30_000 });
  private worker?: Promise<void>;
  private running = false;
  /**
   * Jobs as this controller last wrote them, until the cache shows the write: a reconcile that
   * runs before the watch delivers an admission must not count that job as still pending
   * (it would admit a second job into the same quota). Keyed by namespace/name.
   */
  private readonly written = new Map<string, { over: string | undefined; job: FineTuneJob }>();
  /**
   * Preemptions made but not yet counted in the queue's status.preempted: the status write may
   * fail (its resourceVersion guard, while the cache lags behind our previous write) after the
   * jobs were already written, and the next reconcile no longer sees them as preemptions to make.
   */
  private readonly uncountedPreemptions = new Map<string, number>();
  private readonly priorityClasses = new Map<string, { value: number | undefined; at: number }>();
  private readonly namespaceLabels = new Map<string, { labels: Record<string, string>; at: number }>();
  /** Reconciles completed since start; tests read it. */
  reconciles = 0;

  constructor(private readonly options: QueueControllerOptions) {
    this.queues = new Informer<FineTuneQueue>(options.client, { path: resourcePath({ group: GROUP, version: VERSION, plural: QUEUE_PLURAL }), log: options.log });
    this.queues.on({
      add: (queue) => this.queue.add(queue.metadata.name!),
      update: (queue) => this.queue.add(queue.metadata.name!),
      delete: (queue) => {
        options.metrics.removeQueue(queue.metadata.name!);
        this.uncountedPreemptions.delete(queue.metadata.name!);
        // Jobs naming it now wait for a queue that is gone: say so.
        this.queue.add(queue.metadata.name!);
      },
    });
    const enqueue = (job: FineTuneJob) => {
      if (job.spec?.queueName) this.queue.add(job.spec.queueName);
    };
    for (const informer of options.jobs) {
      informer.addIndex(BY_QUEUE, (job) => (job.spec?.queueName ? [job.spec.queueName] : []));
      informer.on({
        add: enqueue,
        update: (job, old) => {
          enqueue(job);
          if (old.spec?.queueName !== job.spec?.queueName) enqueue(old);
        },
        delete: (job) => {
          this.written.delete(`${job.metadata.namespace}/${job.metadata.name}`);
          enqueue(job);
        },
      });
    }
  }

  /** Fills the queue cache; call before start(). The job caches are started by their owner. */
  async sync(): Promise<void> {
    await this.queues.start();
  }

  /** Starts the worker (only the leader calls this). */
  start(): void {
    if (this.running) return;
    this.running = true;
    for (const queue of this.queues.list()) this.queue.add(queue.metadata.name!);
    for (const informer of this.options.jobs) for (const job of informer.list()) if (job.spec?.queueName) this.queue.add(job.spec.queueName);
    this.worker = this.work();
  }

  async stop(): Promise<void> {
    this.queue.shutDown();
    await this.worker;
    await this.queues.stop();
  }

  isHealthy(): boolean {
    return this.queues.hasSynced() && this.queues.isWatching();
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      try {
        await this.reconcile(key);
        this.queue.forget(key);
      } catch (error) {
        const delay = this.queue.addRateLimited(key);
        // A conflict only means a job changed under us: the next reconcile reads it again.
        if (!(error instanceof ApiError && error.status === 409)) this.options.log(`queue ${key}: reconcile failed, retrying in ${delay}ms: ${(error as Error).message}`);
      } finally {
        this.reconciles += 1;
        this.queue.done(key);
      }
    }
  }

  /** The jobs naming the queue, each as the cache shows it or as this controller last wrote it if the cache is behind. */
  private jobsOf(queueName: string): FineTuneJob[] {
    return this.options.jobs.flatMap((informer) =>
      informer.byIndex(BY_QUEUE, queueName).map((cached) => {
        const key = `${cached.metadata.namespace}/${cached.metadata.name}`;
        const written = this.written.get(key);
        if (!written) return cached;
        // The cache still holds the version our write replaced: use what we wrote.
        if (cached.metadata.resourceVersion === written.over) return written.job;
        this.written.delete(key);
        return cached;
      }),
    );
  }

  private async reconcile(queueName: string): Promise<void> {
    const queue = this.queues.get(undefined, queueName);
    const now = new Date();
    const jobs = this.jobsOf(queueName).filter((job) => !isFinished(job));
    if (!queue) {
      if (this.options.kueueEnabled) return;
      for (const job of jobs) {
        if (isAdmitted(job)) continue;
        await this.writeJob(job, now, { status: "False", reason: "Queued", message: `no FineTuneQueue named ${queueName} exists: create it (kubectl get ftq lists them) or change spec.queueName` }, null);
      }
      return;
    }
    const spec = applyQueueDefaults(queue.spec);
    const quota: QueueQuota = {
      name: queueName,
      gpus: spec.gpus,
      ...(spec.cpu !== undefined ? { cpu: Math.round(parseQuantity(spec.cpu) * 1000) } : {}),
      ...(spec.memory !== undefined ? { memory: Math.round(parseQuantity(spec.memory)) } : {}),
      preemption: spec.preemption,
    };

    const entries: QueueJob[] = [];
    const byKey = new Map<string, FineTuneJob>();
    for (const job of jobs) {
      const key = `${job.metadata.namespace}/${job.metadata.name}`;
      const admitted = job.status?.conditions?.find((condition) => condition.type === "Admitted");
      const holds = admitted?.status === "True";
      if (job.spec?.runPolicy?.suspend) {
        // A suspended job holds its quota until its trainer has stopped, then gives it back and waits outside the queue.
        if (holds && job.status?.phase === "Suspended") await this.writeJob(job, now, { status: "False", reason: "Suspended", message: "runPolicy.suspend is true: the job gave its quota back and is queued again when it resumes" }, null);
        else if (holds) entries.push(this.entry(job, key, "releasing", await this.priorityOf(job)));
        continue;
      }
      if (admitted?.status === "False" && admitted.reason === "ExceedsQueueQuota") continue;
      if (job.metadata.deletionTimestamp) {
        if (holds) entries.push(this.entry(job, key, "releasing", 0));
        continue;
      }
      if (!holds && !(await this.serves(spec.namespaces, spec.namespaceSelector, job.metadata.namespace!))) {
        await this.writeJob(job, now, { status: "False", reason: "Queued", message: `FineTuneQueue ${queueName} does not serve namespace ${job.metadata.namespace} (its spec.namespaces and spec.namespaceSelector): name another queue` }, null);
        continue;
      }
      // Preempted, with the trainer still stopping: the job controller moves it to Queued once the pod is gone.
      const releasing = !holds && admitted?.reason === "Preempted" && job.status?.phase !== "Queued";
      entries.push(this.entry(job, key, holds ? "admitted" : releasing ? "releasing" : "pending", await this.priorityOf(job)));
      byKey.set(key, job);
    }

    const decision = decideAdmission(quota, entries);
    const priorityOf = new Map(entries.map((entry) => [entry.key, entry.priority]));
    // Preemptions first: they free nothing at once, and a failure afterwards leaves no admission beyond the quota.
    for (const { key, by } of decision.preempt) {
      const job = byKey.get(key)!;
      const message = `preempted by ${by} (priority ${priorityOf.get(by)}, above this job's ${priorityOf.get(key)}) in FineTuneQueue ${queueName}: the trainer saves a checkpoint, and the job waits in the queue to resume from it`;
      await this.writeJob(job, now, { status: "False", reason: "Preempted", message }, null);
      this.uncountedPreemptions.set(queueName, (this.uncountedPreemptions.get(queueName) ?? 0) + 1);
      this.options.metrics.preemptions.inc({ queue: queueName });
      await this.options.events.record(job, "Warning", "Preempted", message);
    }
    for (const { key, message } of decision.neverFit) {
      await this.writeJob(byKey.get(key)!, now, { status: "False", reason: "ExceedsQueueQuota", message }, null);
    }
    let admittedNow = 0;
    for (const key of decision.admit) {
      const job = byKey.get(key)!;
      const admitted = job.status?.conditions?.find((condition) => condition.type === "Admitted");
      const waitingSince = Date.parse(String(admitted?.status === "False" ? admitted.lastTransitionTime : job.metadata.creationTimestamp ?? now.toISOString()));
      const message = `admitted by FineTuneQueue ${queueName}: ${describeHeld(quota, decision.usage)}`;
      await this.writeJob(job, now, { status: "True", reason: "Admitted", message }, null);
      admittedNow += 1;
      this.options.metrics.admissions.inc({ queue: queueName });
      if (Number.isFinite(waitingSince)) this.options.metrics.waitSeconds.observe({ queue: queueName }, Math.max(0, (now.getTime() - waitingSince) / 1000));
      await this.options.events.record(job, "Normal", "Admitted", message);
    }
    for (const { key, position, reason } of decision.waiting) {
      await this.writeJob(byKey.get(key)!, now, { status: "False", reason: "Queued", message: reason }, { position, waitReason: reason });
    }

    const holding = entries.filter((entry) => entry.state !== "pending").length + admittedNow;
    const status: FineTuneQueueStatus = {
      gpusInUse: decision.usage.gpus,
      ...(quota.cpu !== undefined ? { cpuInUse: formatCpu(decision.usage.cpu) } : {}),
      ...(quota.memory !== undefined ? { memoryInUse: formatMemory(decision.usage.memory) } : {}),
      admitted: holding,
      queued: decision.waiting.length,
      preempted: (queue.status?.preempted ?? 0) + (this.uncountedPreemptions.get(queueName) ?? 0),
      observedGeneration: queue.metadata.generation,
      conditions: withCondition(queue.status?.conditions ?? [], {
        type: "Ready",
        status: "True",
        reason: decision.waiting.length ? "JobsWaiting" : "Admitting",
        message: `${describeHeld(quota, decision.usage)}; ${decision.waiting.length} waiting`,
        lastTransitionTime: now.toISOString(),
        observedGeneration: queue.metadata.generation,
      }, now),
    };
    this.options.metrics.setQueue(queueName, { pending: decision.waiting.length, admitted: holding, gpusInUse: decision.usage.gpus, gpusQuota: quota.gpus });
    const { conditions: _before, ...comparableBefore } = queue.status ?? {};
    const { conditions: _after, ...comparableAfter } = status;
    if (!isDeepStrictEqual(comparableBefore, comparableAfter) || !sameConditions(queue.status?.conditions, status.conditions)) {
      // Only this controller writes a queue's status; the resourceVersion still guards the preempted count against a stale cache.
      await this.options.client.patch(resourcePath({ group: GROUP, version: VERSION, plural: QUEUE_PLURAL, name: queueName, subresource: "status" }), {
        metadata: { resourceVersion: queue.metadata.resourceVersion },
        status,
      });
    }
    this.uncountedPreemptions.delete(queueName);
  }

  private entry(job: FineTuneJob, key: string, state: QueueJob["state"], priority: number): QueueJob {
    return { key, state, priority, createdAt: Date.parse(String(job.metadata.creationTimestamp ?? 0)) || 0, demand: demandOf(job) };
  }

  /**
   * Sets the job's Admitted condition and status.queue (null removes it), only when they
   * change, conditional on the resourceVersion read: a job changed since gets 409 and the queue
   * is reconciled again on the fresh copy.
   */
  private async writeJob(job: FineTuneJob, now: Date, admitted: { status: "True" | "False"; reason: Reason; message: string }, queue: { position: number; waitReason: string } | null): Promise<void> {
    const conditions = withCondition(job.status?.conditions ?? [], { type: "Admitted", ...admitted, lastTransitionTime: now.toISOString(), observedGeneration: job.metadata.generation }, now);
    const queueChanged = queue === null ? job.status?.queue !== undefined : !isDeepStrictEqual(job.status?.queue, queue);
    if (sameConditions(job.status?.conditions, conditions) && !queueChanged) return;
    const path = resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace: job.metadata.namespace, name: job.metadata.name, subresource: "status" });
    const updated = await this.options.client.patch<FineTuneJob>(path, { metadata: { resourceVersion: job.metadata.resourceVersion }, status: { conditions, ...(queueChanged ? { queue } : {}) } });
    this.written.set(`${job.metadata.namespace}/${job.metadata.name}`, { over: job.metadata.resourceVersion, job: updated });
  }

  /** spec.priority, else the value of resources.priorityClassName's PriorityClass, else 0. */
  private async priorityOf(job: FineTuneJob): Promise<number> {
    if (job.spec?.priority !== undefined) return job.spec.priority;
    const name = job.spec?.resources?.priorityClassName;
    if (!name) return 0;
    const cached = this.priorityClasses.get(name);
    if (cached && Date.now() - cached.at < LOOKUP_TTL_MS) return cached.value ?? 0;
    let value: number | undefined;
    try {
      value = (await this.options.client.get<{ value: number }>(resourcePath({ group: "scheduling.k8s.io", version: "v1", plural: "priorityclasses", name }))).value;
    } catch (error) {
      if (!isNotFound(error)) throw error;
      this.options.log(`job ${job.metadata.namespace}/${job.metadata.name}: PriorityClass ${name} does not exist; its queue priority is 0`);
    }
    this.priorityClasses.set(name, { value, at: Date.now() });
    return value ?? 0;
  }

  private async serves(namespaces: string[] | undefined, selector: NamespaceSelector | undefined, namespace: string): Promise<boolean> {
    if (!namespaces?.length && !selector) return true;
    if (namespaces?.includes(namespace)) return true;
    if (!selector) return false;
    let cached = this.namespaceLabels.get(namespace);
    if (!cached || Date.now() - cached.at > LOOKUP_TTL_MS) {
      const object = await this.options.client.get<{ metadata: { labels?: Record<string, string> } }>(resourcePath({ group: "", version: "v1", plural: "namespaces", name: namespace }));
      cached = { labels: object.metadata.labels ?? {}, at: Date.now() };
      this.namespaceLabels.set(namespace, cached);
    }
    return matchesSelector(selector, cached.labels);
  }
}

/** metav1.LabelSelector semantics: every matchLabels entry and every expression must hold. */
export function matchesSelector(selector: NamespaceSelector, labels: Record<string, string>): boolean {
  const byLabels = Object.entries(selector.matchLabels ?? {}).every(([key, value]) => labels[key] === value);
  const byExpressions = (selector.matchExpressions ?? []).every((expression) => {
    const value = labels[expression.key];
    switch (expression.operator) {
      case "In":
        return value !== undefined && (expression.values ?? []).includes(value);
      case "NotIn":
        return value === undefined || !(expression.values ?? []).includes(value);
      case "Exists":
        return value !== undefined;
      case "DoesNotExist":
        return value === undefined;
    }
    return false;
  });
  return byLabels && byExpressions;
}

/** What a job asks of its queue's quota: its GPUs, and its CPU and memory requests. */
export function demandOf(job: FineTuneJob): Demand {
  const resources = job.spec?.resources ?? {};
  return {
    gpus: resources.gpus ?? 0,
    cpu: resources.cpu !== undefined ? Math.round(parseQuantity(resources.cpu) * 1000) : 0,
    memory: resources.memory !== undefined ? Math.round(parseQuantity(resources.memory)) : 0,
  };
}

function describeHeld(quota: QueueQuota, usage: Demand): string {
  return `${usage.gpus} of ${quota.gpus} GPUs in use`;
}

function isFinished(job: FineTuneJob): boolean {
  return job.status?.phase === "Succeeded" || job.status?.phase === "Failed";
}

function isAdmitted(job: FineTuneJob): boolean {
  return job.status?.conditions?.some((condition) => condition.type === "Admitted" && condition.status === "True") ?? false;
}

/** Conditions compared without lastTransitionTime churn: withCondition keeps it when the status holds. */
function sameConditions(a: readonly Condition[] | undefined, b: readonly Condition[] | undefined): boolean {
  return isDeepStrictEqual(a ?? [], b ?? []);
}

/** Sets a condition, keeping lastTransitionTime while its status does not change (metav1 semantics). */
function withCondition(conditions: Condition[], condition: Condition, now: Date): Condition[] {
  const existing = conditions.find((entry) => entry.type === condition.type);
  const lastTransitionTime = existing && existing.status === condition.status ? existing.lastTransitionTime : now.toISOString();
  const updated = { ...condition, lastTransitionTime };
  return existing ? conditions.map((entry) => (entry.type === condition.type ? updated : entry)) : [...conditions, updated];
}
