import type { V1Pod } from "@kubernetes/client-node";
import { isDeepStrictEqual } from "node:util";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { ApiError, isAlreadyExists, isNotFound, resourcePath, type KubeClient, type KubeObject } from "../../kube/client.ts";
import { Informer, keepOnlyFields } from "../../kube/informer.ts";
import type { OperatorMetrics } from "../metrics.ts";
import type { EventRecorder } from "../runtime/events.ts";
import { Expectations } from "../runtime/expectations.ts";
import { WorkQueue } from "../runtime/workqueue.ts";
import { decide, decideEarlierJobPod, decideNameConflict, type Action, type Decision, type DecideSettings } from "./decide.ts";
import { FINALIZER, LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB_NAME, trainerPodName } from "./pods.ts";

export interface ControllerOptions {
  client: KubeClient;
  settings: DecideSettings;
  metrics: OperatorMetrics;
  events: EventRecorder;
  /** Watch only these namespaces; all when empty. */
  namespaces: string[];
  /** Reconciles run at once (different jobs; one job is never reconciled twice at a time). */
  concurrency: number;
  log: (message: string) => void;
}

/** The pod informers' index of pods by the uid of their controlling owner. */
const BY_OWNER = "owner";

/**
 * Every object is delivered again this often, as controller-runtime's SyncPeriod (10 hours by
 * default): a safety net, not a timer. Timeouts and backoffs come back through
 * requeueAfterSeconds, so nothing waits for a resync.
 */
const RESYNC_MS = 10 * 60 * 60_000;
/** A resync's reconciles are spread over this long rather than queued all at once. */
const RESYNC_SPREAD_MS = 5 * 60_000;

/**
 * The FineTuneJob controller: informers feed a de-duplicating work queue; each worker takes a
 * job key and runs observe (from the caches) -> decide (pure) -> act (API calls) -> write
 * status. Failed reconciles are retried with per-key exponential backoff. A reconcile reads
 * its job and that job's pods (through an index by owner), never the whole cache, and the
 * jobs-by-phase gauge is kept from informer events, so a reconcile costs the same with ten
 * jobs or ten thousand.
 */
export class FineTuneJobController {
  readonly jobs: Informer<FineTuneJob>[];
  readonly pods: Informer<V1Pod>[];
  private readonly queue = new WorkQueue({ baseMs: 100, maxMs: 60_000 });
  private workers: Promise<void>[] = [];
  private running = false;
  /** Pods this process created that the pod cache has not shown yet. */
  private readonly expectations = new Expectations();
  /**
   * Versions of each job that this process's own writes (status; a legacy finalizer's removal) replaced, until the
   * cache shows a newer one: a reconcile that starts from one of them would redo the write and
   * meet a conflict (a pod's event can wake it before the job's own event has arrived).
   */
  private readonly replaced = new Map<string, string[]>();
  /** Reconciles completed since start; the benchmark reads it. */
  reconciles = 0;

  constructor(private readonly options: ControllerOptions) {
    const scopes = options.namespaces.length ? options.namespaces : [undefined];
    this.jobs = scopes.map(
      (namespace) => new Informer<FineTuneJob>(options.client, { path: resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace }), resyncMs: RESYNC_MS, log: options.log }),
    );
    this.pods = scopes.map(
      (namespace) =>
        new Informer<V1Pod>(options.client, {
          path: resourcePath({ group: "", version: "v1", plural: "pods", namespace }),
          labelSelector: LABEL_JOB_NAME,
          // decide() reads a pod's metadata and status; its spec (containers, environment, the job spec again) is most of its size.
          transform: keepOnlyFields<V1Pod>(["status", "spec.nodeName"]),
          log: options.log,
        }),
    );
    for (const informer of this.pods) informer.addIndex(BY_OWNER, (pod) => ownerUids(pod));
    const keyOf = (job: FineTuneJob) => `${job.metadata.namespace}/${job.metadata.name}`;
    for (const informer of this.jobs) {
      informer.on({
        add: (job) => {
          options.metrics.jobAdded(job);
          this.queue.add(keyOf(job));
        },
        update: (job, old) => {
          options.metrics.jobUpdated(old, job);
          // A resync delivers the same version again: spread those reconciles out.
          if (job.metadata.resourceVersion === old.metadata.resourceVersion) this.queue.addAfter(keyOf(job), Math.random() * RESYNC_SPREAD_MS);
          else this.queue.add(keyOf(job));
        },
        delete: (job) => {
          options.metrics.jobDeleted(job);
          options.metrics.removeJob(job.metadata.namespace!, job.metadata.name!);
          this.expectations.forget(keyOf(job));
          this.replaced.delete(keyOf(job));
        },
      });
    }
    const enqueueOwner = (pod: V1Pod) => {
      const jobName = pod.metadata?.labels?.[LABEL_JOB_NAME];
      if (jobName) this.queue.add(`${pod.metadata?.namespace}/${jobName}`);
    };
    const observeCreation = (pod: V1Pod) => {
      const jobName = pod.metadata?.labels?.[LABEL_JOB_NAME];
      if (jobName) this.expectations.observed(`${pod.metadata?.namespace}/${jobName}`, pod.metadata!.name!);
      enqueueOwner(pod);
    };
    for (const informer of this.pods) informer.on({ add: observeCreation, update: enqueueOwner, delete: enqueueOwner });
  }

  /**
   * True while more reconciles wait for a worker than there are workers: a burst (many new jobs at once), not the
   * steady trickle of pod and progress events, whose Events should show at once.
   */
  hasBacklog(): boolean {
    return this.queue.length > this.options.concurrency;
  }

  /** Fills the caches; call before start(). */
  async sync(): Promise<void> {
    await Promise.all([...this.jobs, ...this.pods].map((informer) => informer.start()));
  }

  /** Starts the workers (only the leader calls this). */
  start(): void {
    if (this.running) return;
    this.running = true;
    for (const informer of this.jobs) for (const job of informer.list()) this.queue.add(`${job.metadata.namespace}/${job.metadata.name}`);
    this.workers = Array.from({ length: this.options.concurrency }, () => this.work());
  }

  async stop(): Promise<void> {
    this.queue.shutDown();
    await Promise.all(this.workers);
    await Promise.all([...this.jobs, ...this.pods].map((informer) => informer.stop()));
  }

  /** True while every informer has synced and holds a watch: the readiness probe. */
  isHealthy(): boolean {
    return [...this.jobs, ...this.pods].every((informer) => informer.hasSynced() && informer.isWatching());
  }

  job(namespace: string, name: string): FineTuneJob | undefined {
    for (const informer of this.jobs) {
      const job = informer.get(namespace, name);
      if (job) return job;
    }
    return undefined;
  }

  allJobs(): FineTuneJob[] {
    return this.jobs.flatMap((informer) => informer.list());
  }

  /** The pods the cache shows owned (as controller) by this job, found through the owner index. */
  podsOf(job: FineTuneJob): V1Pod[] {
    const uid = job.metadata.uid;
    if (!uid) return [];
    return this.pods.flatMap((informer) => informer.byIndex(BY_OWNER, uid));
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      const started = process.hrtime.bigint();
      try {
        const requeueAfter = await this.reconcile(key);
        this.queue.forget(key);
        if (requeueAfter !== undefined) this.queue.addAfter(key, requeueAfter * 1000);
      } catch (error) {
        this.options.metrics.reconcileErrors.inc();
        const delay = this.queue.addRateLimited(key);
        if (!(error instanceof ApiError && error.status === 409)) {
          this.options.log(`reconcile ${key} failed, retrying in ${delay}ms: ${(error as Error).message}`);
        }
      } finally {
        this.reconciles += 1;
        this.options.metrics.reconcileDuration.observe(Number(process.hrtime.bigint() - started) / 1e9);
        this.queue.done(key);
      }
    }
  }

  /** One reconcile of one job; returns seconds until it should run again, if a timer is due. */
  private async reconcile(key: string): Promise<number | undefined> {
    const [namespace, name] = key.split("/") as [string, string];
    const cached = this.job(namespace, name);
    if (!cached) return undefined;
    // The cache has not caught up with our own last write of the job: its watch event brings the job back (and the
    // requeue in a second, should that event be lost with a watch).
    if (this.replaced.get(key)?.includes(cached.metadata.resourceVersion!)) return 1;
    this.replaced.delete(key);
    // Our own writes update this copy's resourceVersion, never the cache's object.
    const job: FineTuneJob = { ...cached, metadata: { ...cached.metadata } };
    // Pods this process created are not all in the cache yet: deciding now would see them as missing.
    const pendingMs = this.expectations.pendingMs(key);
    if (pendingMs > 0) return Math.min(pendingMs, 5000) / 1000;
    const pods = this.podsOf(job);
    let decision = decide(job, pods, new Date(), this.options.settings);
    if (await this.previousAttemptStillExists(job, pods, decision)) return 1;
    try {
      await this.actAll(job, decision.actions);
    } catch (error) {
      if (error instanceof NameConflictError) decision = decideNameConflict(job, error.object, new Date());
      else if (error instanceof EarlierJobPodError) decision = decideEarlierJobPod(job, error.object, new Date());
      else throw error;
    }
    // Events first: they tell of actions already taken, which a status write refused as stale must not hide. record()
    // only queues them (written in the background, in order): the reconcile never waits on an Event write.
    for (const event of decision.events) this.options.events.record(job, event.type, event.reason, event.message);
    if (decision.status && !job.metadata.deletionTimestamp) await this.writeStatus(job, decision.status);
    this.observeMetrics(job, decision);
    return decision.requeueAfterSeconds;
  }

  /**
   * Before a next attempt replaces one whose pod the cache does not show (vanished: deleted or
   * evicted), a live read makes sure the pod is really gone: a cache filled before a restarted
   * operator's predecessor created it would otherwise make a duplicate. Only this rare path reads.
   */
  private async previousAttemptStillExists(job: FineTuneJob, pods: V1Pod[], decision: Decision): Promise<boolean> {
    const created = decision.actions.find((action) => action.kind === "createPod" && action.pod.metadata?.labels?.[LABEL_COMPONENT] === "trainer");
    if (!created || created.kind !== "createPod") return false;
    const previous = Number(created.pod.metadata?.labels?.[LABEL_ATTEMPT]) - 1;
    if (previous < 1) return false;
    const previousName = trainerPodName(job.metadata.name!, previous);
    if (pods.some((pod) => pod.metadata?.name === previousName)) return false;
    try {
      const pod = await this.options.client.get<V1Pod>(resourcePath({ group: "", version: "v1", plural: "pods", namespace: job.metadata.namespace, name: previousName }));
      return controllerUid(pod) === job.metadata.uid;
    } catch (error) {
      if (isNotFound(error)) return false;
      throw error;
    }
  }

  /** Takes the actions in order, each after the one before. */
  private async actAll(job: FineTuneJob, actions: Action[]): Promise<void> {
    for (const action of actions) await this.act(job, action);
  }

  private async act(job: FineTuneJob, action: Action): Promise<void> {
    const { client } = this.options;
    const namespace = job.metadata.namespace!;
    const jobPath = resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name: job.metadata.name });
    const podPath = (name?: string) => resourcePath({ group: "", version: "v1", plural: "pods", namespace, name });
    switch (action.kind) {
      case "removeFinalizer": {
        // The legacy finalizer of an earlier version (decide()); a status write that follows is conditional on this one.
        const written = await client
          .patch<FineTuneJob>(jobPath, [{ op: "test", path: "/metadata/resourceVersion", value: job.metadata.resourceVersion }, { op: "replace", path: "/metadata/finalizers", value: (job.metadata.finalizers ?? []).filter((entry) => entry !== FINALIZER) }], "json")
          .catch((error: unknown) => (isNotFound(error) ? undefined : Promise.reject(error)));
        if (written) this.wrote(job, written);
        return;
      }
      case "createPod": {
        const key = `${namespace}/${job.metadata.name}`;
        const podName = action.pod.metadata!.name!;
        this.expectations.expectCreation(key, podName);
        try {
          await client.create(podPath(), action.pod);
        } catch (error) {
          if (!isAlreadyExists(error)) {
            this.expectations.observed(key, podName);
            throw error;
          }
          // Deterministic names: a pod of ours made by an earlier reconcile (or operator) is adopted, not duplicated;
          // one that is not ours is never adopted.
          const existing = await client.get<V1Pod>(podPath(podName)).catch((readError: unknown) => (isNotFound(readError) ? undefined : Promise.reject(readError)));
          if (existing && controllerUid(existing) !== job.metadata.uid) {
            this.expectations.observed(key, podName);
            if (ownedByEarlierJob(existing, job)) {
              // Its job is gone (two jobs cannot share a name at once), so the garbage collector deletes it anyway:
              // asking now, conditional on its uid, spares the wait for the collector.
              if (!existing.metadata?.deletionTimestamp) await client.delete(podPath(podName), { preconditions: { uid: existing.metadata!.uid! } }).catch(ignoreGoneOrChanged);
              throw new EarlierJobPodError({ kind: "Pod", name: podName, owner: ownerName(existing) });
            }
            throw new NameConflictError({ kind: "Pod", name: podName, owner: ownerName(existing) });
          }
          if (existing && existing.metadata?.labels?.[LABEL_JOB_NAME] !== job.metadata.name) this.expectations.observed(key, podName);
        }
        return;
      }
      case "deletePod":
        await client.delete(podPath(action.name)).catch(ignoreNotFound);
        return;
      case "deleteJob":
        await client.delete(jobPath, { propagationPolicy: "Background" }).catch(ignoreNotFound);
        return;
    }
  }

  /** Writes only the status fields that changed, so progress written by the trainer in between is kept. */
  private async writeStatus(job: FineTuneJob, status: NonNullable<FineTuneJob["status"]>): Promise<void> {
    const current = (job.status ?? {}) as Record<string, unknown>;
    const changed = Object.fromEntries(Object.entries(status).filter(([field, value]) => !isDeepStrictEqual(current[field], value)));
    if (Object.keys(changed).length === 0) return;
    const statusPath = resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace: job.metadata.namespace, name: job.metadata.name, subresource: "status" });
    // The resourceVersion makes the write conditional: a reconcile that read a stale job gets 409 and runs again on the
    // fresh one, instead of replacing what was written since (conditions are replaced whole by a merge patch).
    this.wrote(job, await this.options.client.patch<FineTuneJob>(statusPath, { metadata: { resourceVersion: job.metadata.resourceVersion }, status: changed }));
  }

  /**
   * After a conditional write of the job: its copy takes the version the write made (the next write is conditional
   * on it), and the version it replaced is noted, so that a reconcile does not start from it again.
   */
  private wrote(job: FineTuneJob, written: FineTuneJob): void {
    const key = `${job.metadata.namespace}/${job.metadata.name}`;
    // A reconcile writes the job at most twice (a legacy finalizer's removal, then status); a few more cover back-to-back reconciles.
    this.replaced.set(key, [...(this.replaced.get(key) ?? []), job.metadata.resourceVersion!].slice(-4));
    job.metadata.resourceVersion = written.metadata.resourceVersion;
  }

  private observeMetrics(job: FineTuneJob, decision: ReturnType<typeof decide>): void {
    const { metrics } = this.options;
    const before = job.status?.phase;
    const after = decision.status?.phase;
    const labels = { namespace: job.metadata.namespace!, job: job.metadata.name! };
    if (after && after !== before && (after === "Succeeded" || after === "Failed") && decision.status?.startTime) {
      metrics.jobDuration.observe({ result: after }, (Date.now() - Date.parse(decision.status.startTime)) / 1000);
    }
    const created = decision.actions.find((action) => action.kind === "createPod" && action.pod.metadata?.labels?.["app.kubernetes.io/component"] === "trainer");
    if (created && !job.status?.attempts && job.metadata.creationTimestamp) {
      metrics.queueWait.observe((Date.now() - Date.parse(String(job.metadata.creationTimestamp))) / 1000);
    }
    for (const event of decision.events) if (event.reason === "Retrying") metrics.retries.inc({ reason: /\(([A-Za-z]+):/.exec(event.message)?.[1] ?? "Unknown" });
    // Only the running attempt has a series (docs/metrics.md): at 10,000 queued or finished jobs a
    // zero series each would cost the operator megabytes and Prometheus as many series.
    if ((after ?? before) === "Running") metrics.gpus.set(labels, job.spec?.resources?.gpus ?? 0);
    else metrics.gpus.remove(labels);
    if (after) metrics.setJobState(labels.namespace, labels.job, after, after === "Running" ? lastProgressOf(decision.status!) : undefined);
  }
}

/** The trainer's latest report, or the start of the current attempt if that is newer (a resumed job has old progress). */
function lastProgressOf(status: NonNullable<FineTuneJob["status"]>): Date | undefined {
  const times = [status.progress?.updatedAt, status.conditions?.find((condition) => condition.type === "Running")?.lastTransitionTime, status.startTime]
    .filter((time): time is string => time !== undefined)
    .map((time) => Date.parse(time));
  return times.length ? new Date(Math.max(...times)) : undefined;
}

/** An object the job needs exists under its name but is not the job's. */
class NameConflictError extends Error {
  constructor(readonly object: { kind: string; name: string; owner?: string }) {
    super(`${object.kind} ${object.name} exists and is not owned by the job`);
  }
}

/** A pod of an earlier job of this name: made by the operator for a FineTuneJob with the same name, another uid. */
class EarlierJobPodError extends Error {
  constructor(readonly object: { kind: string; name: string; owner?: string }) {
    super(`${object.kind} ${object.name} belongs to an earlier job of the same name`);
  }
}

/** True when the pod's controller is a FineTuneJob of the job's name that is not the job: one deleted before it was made. */
function ownedByEarlierJob(pod: V1Pod, job: FineTuneJob): boolean {
  const owner = pod.metadata?.ownerReferences?.find((reference) => reference.controller);
  return owner?.apiVersion === API_VERSION && owner.kind === KIND && owner.name === job.metadata.name && owner.uid !== job.metadata.uid;
}

/** A delete conditional on a uid: gone already (404) or replaced by another object (409) both mean nothing to do. */
function ignoreGoneOrChanged(error: unknown): void {
  if (!isNotFound(error) && !(error instanceof ApiError && error.status === 409)) throw error;
}

/** The uid of the object's controlling owner, as an index value list (empty when it has none). */
function ownerUids(object: KubeObject): string[] {
  const uid = controllerUid(object);
  return uid ? [uid] : [];
}

function controllerUid(object: KubeObject): string | undefined {
  return object.metadata?.ownerReferences?.find((owner) => owner.controller)?.uid;
}

function ownerName(object: KubeObject): string | undefined {
  const owner = object.metadata?.ownerReferences?.find((reference) => reference.controller);
  return owner ? `${owner.kind} ${owner.name} (uid ${owner.uid})` : undefined;
}

function ignoreNotFound(error: unknown): void {
  if (!isNotFound(error)) throw error;
}
