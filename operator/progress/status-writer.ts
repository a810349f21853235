import { GROUP, PLURAL, VERSION, appendLossPoint, formatDuration, formatLoss, formatPercent, type FineTuneJob, type LossPoint } from "../../api/index.ts";
import { isConflict, isNotFound, resourcePath, type KubeClient } from "../../kube/client.ts";
import { PREFERENCE_FIELDS, type ProgressReport } from "./report.ts";

export interface StatusWriterOptions {
  client: KubeClient;
  /** The job as the operator's cache knows it; every try of each write starts from it (after a conflict, from a newer version). */
  lookup: (namespace: string, name: string) => FineTuneJob | undefined;
  /** Least time between two status writes of one job for ordinary progress. Default 5 s. */
  intervalMs?: number;
  /** Least time between two writes when a checkpoint or the outputs wait (the trainer waits for them). Default 1 s. */
  urgentIntervalMs?: number;
  /** Tries of one write that meet a conflict (409) before it fails. Default 5. */
  maxConflictRetries?: number;
  /** After a conflict, how long to wait for the cache (lookup) to show a newer version of the job before the write fails. Default 10 s. */
  conflictWaitMs?: number;
  /** Told of each status write made. */
  onWrite?: () => void;
  log?: (message: string) => void;
}

/** Why a write was dropped rather than made; the server answers the waiting trainer with it. */
export class WriteRefused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "WriteRefused";
  }
}

/** What the reports received since the job's last write add up to. */
interface Pending {
  /** The latest report with progress in it (totalSteps or loss); the latest wins. */
  progress?: ProgressReport;
  /** Every loss reported since the last write, so that the history misses no span. */
  lossPoints: LossPoint[];
  checkpoint?: { step: number; uri: string; time: string };
  backend?: NonNullable<ProgressReport["backend"]>;
  outputs?: NonNullable<ProgressReport["outputs"]>;
  updatedAt: string;
  /** A trainer waits for this write (a checkpoint or the outputs): written after the short interval. */
  urgent: boolean;
  waiters: { resolve: () => void; reject: (error: Error) => void }[];
}

interface JobWrites {
  namespace: string;
  name: string;
  uid: string;
  pending?: Pending;
  /** When the last write started (Date.now()); 0 before the first. */
  lastWriteAt: number;
  timer?: { handle: NodeJS.Timeout; dueAt: number };
  writing?: Promise<void>;
}

/**
 * Turns a stream of trainer reports into few status writes. Reports of one job received within
 * the interval are merged (the latest progress wins; the loss points are kept for the history)
 * and written as one merge patch, so a trainer posting a hundred times a second costs the API
 * server one write every few seconds, and the operator one reconcile. Each write is
 * conditional on the resourceVersion it was computed from and is recomputed from the cache's
 * next version of the job on conflict, so it never undoes what the controller wrote in between (conditions, phase).
 * A write whose job has meanwhile finished (Succeeded or Failed) is dropped: reports never
 * rewrite a finished job's status.
 */
export class StatusWriter {
  private readonly jobs = new Map<string, JobWrites>();
  private readonly intervalMs: number;
  private readonly urgentIntervalMs: number;
  private closed = false;
  /** Status writes made (successful patches), for tests and metrics. */
  writes = 0;

  constructor(private readonly options: StatusWriterOptions) {
    this.intervalMs = options.intervalMs ?? 5000;
    this.urgentIntervalMs = Math.min(options.urgentIntervalMs ?? 1000, this.intervalMs);
  }

  /**
   * Adds a report of an accepted trainer. Resolves once it is written when `wait` is set (the
   * trainer is told only then that its checkpoint is in status), else at once.
   */
  submit(job: { namespace: string; name: string; uid: string }, report: ProgressReport, wait: boolean): Promise<void> {
    if (this.closed) return Promise.reject(new WriteRefused(503, "the operator is shutting down"));
    const key = `${job.namespace}/${job.name}/${job.uid}`;
    let entry = this.jobs.get(key);
    if (!entry) {
      entry = { ...job, lastWriteAt: 0 };
      this.jobs.set(key, entry);
    }
    const now = new Date().toISOString();
    const pending = (entry.pending ??= { lossPoints: [], updatedAt: now, urgent: false, waiters: [] });
    if (report.totalSteps !== undefined || report.loss !== undefined) pending.progress = report;
    if (report.loss !== undefined) pending.lossPoints.push({ step: report.step, loss: report.loss });
    if (report.checkpoint) pending.checkpoint = { step: report.checkpoint.step, uri: report.checkpoint.uri, time: now };
    if (report.backend) pending.backend = report.backend;
    if (report.outputs) pending.outputs = report.outputs;
    pending.updatedAt = now;
    const done = wait ? new Promise<void>((resolve, reject) => pending.waiters.push({ resolve, reject })) : Promise.resolve();
    if (wait) pending.urgent = true;
    this.schedule(key, entry);
    return done;
  }

  /** Writes what is pending at once (shutdown), then refuses further reports. */
  async close(): Promise<void> {
    this.closed = true;
    for (const [key, entry] of this.jobs) {
      if (entry.timer) clearTimeout(entry.timer.handle);
      entry.timer = undefined;
      if (entry.pending && !entry.writing) this.flush(key, entry);
    }
    await Promise.all([...this.jobs.values()].map((entry) => entry.writing));
  }

  private schedule(key: string, entry: JobWrites): void {
    // One write at a time per job; the write's end schedules what arrived meanwhile.
    if (entry.writing || !entry.pending) return;
    const dueAt = entry.lastWriteAt + (entry.pending.urgent ? this.urgentIntervalMs : this.intervalMs);
    if (entry.timer && entry.timer.dueAt <= dueAt) return;
    if (entry.timer) clearTimeout(entry.timer.handle);
    const handle = setTimeout(() => this.flush(key, entry), Math.max(0, dueAt - Date.now()));
    entry.timer = { handle, dueAt };
  }

  private flush(key: string, entry: JobWrites): void {
    entry.timer = undefined;
    const pending = entry.pending;
    if (!pending) return;
    entry.pending = undefined;
    entry.lastWriteAt = Date.now();
    entry.writing = this.write(entry, pending).then(
      (wrote) => {
        if (wrote) {
          this.writes += 1;
          this.options.onWrite?.();
        }
        for (const waiter of pending.waiters) waiter.resolve();
      },
      (error: unknown) => {
        const refused = error instanceof WriteRefused ? error : new WriteRefused(503, `status write failed: ${(error as Error).message}`);
        if (!(error instanceof WriteRefused)) this.options.log?.(`progress of ${entry.namespace}/${entry.name}: ${refused.message}`);
        for (const waiter of pending.waiters) waiter.reject(refused);
      },
    );
    void entry.writing.finally(() => {
      entry.writing = undefined;
      if (entry.pending) this.schedule(key, entry);
      // Forget a quiet job after its interval, so that deleted jobs leave nothing behind.
      else setTimeout(() => !entry.pending && !entry.writing && !entry.timer && this.jobs.get(key) === entry && this.jobs.delete(key), this.intervalMs).unref();
    });
  }

  /** Writes the pending reports; false when they changed nothing (a bare step). */
  private async write(entry: JobWrites, pending: Pending): Promise<boolean> {
    const path = resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace: entry.namespace, name: entry.name, subresource: "status" });
    const tries = this.options.maxConflictRetries ?? 5;
    let job = this.options.lookup(entry.namespace, entry.name);
    for (let attempt = 1; ; attempt += 1) {
      if (!job || job.metadata.uid !== entry.uid) throw new WriteRefused(404, "the job no longer exists");
      const phase = job.status?.phase;
      if (phase === "Succeeded" || phase === "Failed") throw new WriteRefused(409, `the job has ${phase.toLowerCase()}; its status no longer changes`);
      const status = statusOf(job, pending);
      if (Object.keys(status).length === 0) return false;
      try {
        // The resourceVersion makes the patch conditional: a job that finished, or whose loss history grew, since the version read makes the write fail, and it is recomputed from the newer one.
        await this.options.client.patch(path, { metadata: { resourceVersion: job.metadata.resourceVersion }, status });
        return true;
      } catch (error) {
        if (isNotFound(error)) throw new WriteRefused(404, "the job no longer exists");
        if (!isConflict(error) || attempt >= tries) throw error;
      }
      // Someone wrote the job since the version this write was computed from: recompute from the version after it, as
      // the operator's cache shows it once its watch delivers it. No GET: the cache is what every write starts from.
      job = await this.newerThan(entry, job.metadata.resourceVersion);
    }
  }

  /**
   * The cached job once the cache shows a version other than `resourceVersion` (the one a write met a conflict
   * with; a cache only moves forward), or undefined when the job is gone. The watch delivers that version within
   * milliseconds; a cache that has not within conflictWaitMs (a watch being re-established) fails the write.
   */
  private async newerThan(entry: JobWrites, resourceVersion: string | undefined): Promise<FineTuneJob | undefined> {
    const waitMs = this.options.conflictWaitMs ?? 10_000;
    const deadline = Date.now() + waitMs;
    for (let pollMs = 5; ; pollMs = Math.min(pollMs * 2, 100)) {
      const job = this.options.lookup(entry.namespace, entry.name);
      if (!job || job.metadata.uid !== entry.uid || job.metadata.resourceVersion !== resourceVersion) return job;
      if (Date.now() >= deadline) throw new Error(`the operator's cache has shown no version of the job after ${resourceVersion} for ${waitMs / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(pollMs, Math.max(1, deadline - Date.now()))));
    }
  }
}

/** The status fields a pending set of reports changes, computed against the job as read. */
function statusOf(job: FineTuneJob, pending: Pending): Record<string, unknown> {
  const status: Record<string, unknown> = {};
  const report = pending.progress;
  if (report) {
    const percent = report.totalSteps ? Math.min(100, Math.round((1000 * report.step) / report.totalSteps) / 10) : undefined;
    let lossHistory = job.status?.progress?.lossHistory;
    for (const point of pending.lossPoints) lossHistory = appendLossPoint(lossHistory, point, report.totalSteps);
    const progress: Record<string, unknown> = {
      step: report.step,
      totalSteps: report.totalSteps,
      epoch: report.epoch,
      percent,
      percentText: percent === undefined ? undefined : formatPercent(percent),
      loss: report.loss,
      lossText: report.loss === undefined ? undefined : formatLoss(report.loss),
      lossHistory: pending.lossPoints.length ? lossHistory : undefined,
      evalLoss: report.evalLoss,
      evalAccuracy: report.evalAccuracy,
      // Only the known fields: the report is checked, but the status is written as the API defines it.
      preference: report.preference && Object.fromEntries(PREFERENCE_FIELDS.map((field) => [field, report.preference![field]])),
      learningRate: report.learningRate,
      tokensPerSecond: report.tokensPerSecond,
      etaSeconds: report.etaSeconds === undefined ? undefined : Math.round(report.etaSeconds),
      eta: report.etaSeconds === undefined ? undefined : formatDuration(report.etaSeconds),
      updatedAt: pending.updatedAt,
    };
    status.progress = Object.fromEntries(Object.entries(progress).filter(([, value]) => value !== undefined));
  }
  if (pending.backend) status.backend = pending.backend;
  if (pending.checkpoint) status.lastCheckpoint = pending.checkpoint;
  if (pending.outputs) status.outputs = pending.outputs;
  return status;
}
