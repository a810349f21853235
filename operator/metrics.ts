import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { PHASES, type FineTuneJob, type Phase } from "../api/index.ts";

/** The phase a job's status shows; a new job has none yet and counts as Pending. */
function phaseOf(job: FineTuneJob): Phase {
  return job.status?.phase ?? "Pending";
}

/**
 * The operator's Prometheus metrics. Per-job series carry only namespace and job labels
 * (bounded by the number of jobs) and are removed when the job goes.
 */
export class OperatorMetrics {
  readonly registry = new Registry();
  readonly jobs = new Gauge({ name: "kubetune_jobs", help: "FineTuneJobs by phase and namespace.", labelNames: ["namespace", "phase"], registers: [this.registry] });
  readonly jobDuration = new Histogram({
    name: "kubetune_job_duration_seconds",
    help: "Seconds from a job's start to its success or failure.",
    labelNames: ["result"],
    buckets: [60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400],
    registers: [this.registry],
  });
  readonly queueWait = new Histogram({
    name: "kubetune_job_queue_wait_seconds",
    help: "Seconds from a job's creation until its first trainer pod was created.",
    buckets: [1, 5, 15, 60, 300, 900, 3600, 14400],
    registers: [this.registry],
  });
  readonly retries = new Counter({ name: "kubetune_job_retries_total", help: "Attempts retried, by the reason the previous one ended.", labelNames: ["reason"], registers: [this.registry] });
  readonly reconcileDuration = new Histogram({
    name: "kubetune_reconcile_duration_seconds",
    help: "Seconds one reconcile took.",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly reconcileErrors = new Counter({ name: "kubetune_reconcile_errors_total", help: "Reconciles that failed and were retried.", registers: [this.registry] });
  readonly progress = new Gauge({ name: "kubetune_job_progress_ratio", help: "step / totalSteps of a job, 0 to 1.", labelNames: ["namespace", "job"], registers: [this.registry] });
  readonly loss = new Gauge({ name: "kubetune_job_loss", help: "Training loss a job last reported.", labelNames: ["namespace", "job"], registers: [this.registry] });
  readonly tokensPerSecond = new Gauge({ name: "kubetune_job_tokens_per_second", help: "Training throughput a job last reported.", labelNames: ["namespace", "job"], registers: [this.registry] });
  /** The labels of each job's backend series, so that it can be replaced and removed. */
  private readonly backendLabels = new Map<string, { backend: string; device: string }>();
  readonly backend = new Gauge({
    name: "kubetune_job_backend_info",
    help: "1 for the compute backend (tensorflow, wasm, cpu) and device (gpu, cpu) a job's trainer runs on.",
    labelNames: ["namespace", "job", "backend", "device"],
    registers: [this.registry],
  });
  readonly gpus = new Gauge({ name: "kubetune_job_gpus", help: "GPUs held by a job's running trainer pod.", labelNames: ["namespace", "job"], registers: [this.registry] });
  readonly phase = new Gauge({ name: "kubetune_job_phase", help: "1 for each job's current phase (one series per job).", labelNames: ["namespace", "job", "phase"], registers: [this.registry] });
  readonly lastProgress = new Gauge({
    name: "kubetune_job_last_progress_timestamp_seconds",
    help: "When a running job last showed progress (its trainer's latest report, or the start of its attempt), in Unix seconds; absent unless Running.",
    labelNames: ["namespace", "job"],
    registers: [this.registry],
  });
  readonly progressReports = new Counter({
    name: "kubetune_progress_reports_total",
    help: "Trainer progress reports answered, by HTTP status (202/204 taken; 409 stale attempt or finished job; 403 bad token; 503 not the leader).",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly progressStatusWrites = new Counter({
    name: "kubetune_progress_status_writes_total",
    help: "Status writes made for progress reports, after coalescing (at most one per job every few seconds).",
    registers: [this.registry],
  });
  readonly leader = new Gauge({ name: "kubetune_leader", help: "1 while this operator replica holds the leader Lease and acts, else 0.", registers: [this.registry] });

  /** Exposes the API requests a client has sent, by verb: what the operator costs the API server. */
  trackApiRequests(counts: Record<string, number>): void {
    new Counter({
      name: "kubetune_api_requests_total",
      help: "Requests the operator sent to the Kubernetes API server, by HTTP verb.",
      labelNames: ["verb"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [verb, count] of Object.entries(counts)) this.inc({ verb }, count);
      },
    });
  }

  /** Exposes the Event recorder's backlog: Events waiting to be written, and those dropped because too many waited. */
  trackEvents(events: { readonly pending: number; readonly dropped: number }): void {
    new Gauge({
      name: "kubetune_events_pending",
      help: "Events recorded and not yet written (they yield to reconciles, and wait in a bounded queue).",
      registers: [this.registry],
      collect() {
        this.set(events.pending);
      },
    });
    new Counter({
      name: "kubetune_events_dropped_total",
      help: "Events dropped because the queue of Events waiting to be written was full.",
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(events.dropped);
      },
    });
  }

  /**
   * Each job's phase as last counted in kubetune_jobs, by namespace/name: what a change or a delete subtracts. The
   * phase alone, not an object per job (the namespace is in the key): with 10,000 jobs cached, every byte per entry
   * counts 10,000 times.
   */
  private readonly countedPhases = new Map<string, Phase>();
  /** Jobs counted per namespace and phase. */
  private readonly phaseCounts = new Map<string, Map<Phase, number>>();

  /**
   * kubetune_jobs follows the job cache's add, update and delete events, one job at a time (a
   * reconcile never recounts the whole cache). A namespace's series go once its last job goes.
   */
  jobAdded(job: FineTuneJob): void {
    this.countJob(job.metadata.namespace ?? "", job.metadata.name ?? "", phaseOf(job));
  }

  jobUpdated(_old: FineTuneJob, job: FineTuneJob): void {
    this.countJob(job.metadata.namespace ?? "", job.metadata.name ?? "", phaseOf(job));
  }

  jobDeleted(job: FineTuneJob): void {
    this.countJob(job.metadata.namespace ?? "", job.metadata.name ?? "", undefined);
  }

  private countJob(namespace: string, name: string, phase: Phase | undefined): void {
    const key = `${namespace}/${name}`;
    const before = this.countedPhases.get(key);
    if (before === phase) return;
    let counts = this.phaseCounts.get(namespace);
    if (!counts) {
      counts = new Map(PHASES.map((each) => [each, 0]));
      this.phaseCounts.set(namespace, counts);
    }
    if (before) counts.set(before, counts.get(before)! - 1);
    if (phase) {
      counts.set(phase, counts.get(phase)! + 1);
      this.countedPhases.set(key, phase);
    } else {
      this.countedPhases.delete(key);
    }
    if ([...counts.values()].every((count) => count === 0)) {
      this.phaseCounts.delete(namespace);
      for (const each of PHASES) this.jobs.remove({ namespace, phase: each });
      return;
    }
    for (const [each, count] of counts) this.jobs.set({ namespace, phase: each }, count);
  }

  setJobProgress(namespace: string, job: string, values: { ratio?: number; loss?: number; tokensPerSecond?: number }): void {
    if (values.ratio !== undefined) this.progress.set({ namespace, job }, values.ratio);
    if (values.loss !== undefined) this.loss.set({ namespace, job }, values.loss);
    if (values.tokensPerSecond !== undefined) this.tokensPerSecond.set({ namespace, job }, values.tokensPerSecond);
  }

  /** One series per job: a retry on other hardware replaces the previous attempt's. */
  setJobBackend(namespace: string, job: string, backend: string, device: string): void {
    this.removeJobBackend(namespace, job);
    this.backend.set({ namespace, job, backend, device }, 1);
    this.backendLabels.set(`${namespace}/${job}`, { backend, device });
  }

  private removeJobBackend(namespace: string, job: string): void {
    const labels = this.backendLabels.get(`${namespace}/${job}`);
    if (labels) this.backend.remove({ namespace, job, ...labels });
    this.backendLabels.delete(`${namespace}/${job}`);
  }

  /** Exports the job's phase and, while it runs, when it last progressed. */
  setJobState(namespace: string, job: string, phase: string, lastProgress: Date | undefined): void {
    for (const other of PHASES) if (other !== phase) this.phase.remove({ namespace, job, phase: other });
    this.phase.set({ namespace, job, phase }, 1);
    if (lastProgress) this.lastProgress.set({ namespace, job }, lastProgress.getTime() / 1000);
    else this.lastProgress.remove({ namespace, job });
  }

  removeJob(namespace: string, job: string): void {
    for (const gauge of [this.progress, this.loss, this.tokensPerSecond, this.gpus, this.lastProgress]) gauge.remove({ namespace, job });
    this.removeJobBackend(namespace, job);
    for (const phase of PHASES) this.phase.remove({ namespace, job, phase });
  }
}
