import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/**
 * The queue controller's Prometheus metrics, registered on the operator's registry (the one
 * /metrics serves). Every series carries only the queue label, bounded by the number of
 * FineTuneQueues, and a queue's series go when the queue does.
 */
export class QueueMetrics {
  readonly pending: Gauge;
  readonly admittedJobs: Gauge;
  readonly gpusInUse: Gauge;
  readonly gpusQuota: Gauge;
  readonly admissions: Counter;
  readonly preemptions: Counter;
  readonly waitSeconds: Histogram;

  constructor(registry: Registry) {
    const registers = [registry];
    this.pending = new Gauge({ name: "kubetune_queue_pending_jobs", help: "Jobs waiting for admission in a FineTuneQueue (the queue's length).", labelNames: ["queue"], registers });
    this.admittedJobs = new Gauge({ name: "kubetune_queue_admitted_jobs", help: "Jobs a FineTuneQueue has admitted and that hold its quota now.", labelNames: ["queue"], registers });
    this.gpusInUse = new Gauge({ name: "kubetune_queue_gpus_in_use", help: "GPUs held by a FineTuneQueue's admitted jobs, preempted ones still stopping included.", labelNames: ["queue"], registers });
    this.gpusQuota = new Gauge({ name: "kubetune_queue_gpus_quota", help: "A FineTuneQueue's GPU quota (spec.gpus).", labelNames: ["queue"], registers });
    this.admissions = new Counter({ name: "kubetune_queue_admissions_total", help: "Jobs a FineTuneQueue admitted, re-admissions after preemption included.", labelNames: ["queue"], registers });
    this.preemptions = new Counter({ name: "kubetune_queue_preemptions_total", help: "Admitted jobs a FineTuneQueue stopped for a higher-priority job.", labelNames: ["queue"], registers });
    this.waitSeconds = new Histogram({
      name: "kubetune_queue_wait_seconds",
      help: "Seconds a job waited in a FineTuneQueue before each admission: from its creation, or from its preemption.",
      labelNames: ["queue"],
      buckets: [1, 5, 15, 60, 300, 900, 3600, 14400, 86400],
      registers,
    });
  }

  setQueue(queue: string, values: { pending: number; admitted: number; gpusInUse: number; gpusQuota: number }): void {
    this.pending.set({ queue }, values.pending);
    this.admittedJobs.set({ queue }, values.admitted);
    this.gpusInUse.set({ queue }, values.gpusInUse);
    this.gpusQuota.set({ queue }, values.gpusQuota);
  }

  removeQueue(queue: string): void {
    for (const metric of [this.pending, this.admittedJobs, this.gpusInUse, this.gpusQuota, this.admissions, this.preemptions, this.waitSeconds]) metric.remove({ queue });
  }
}
