// Admission for the built-in FineTuneQueue, as a pure function of the queue's quota and its jobs:
// which waiting jobs to admit, which admitted ones to preempt, where each waiting job stands and
// why, and which jobs can never fit. The queue controller applies the result; nothing here reads
// the cluster, so every rule is unit-tested (admission.test.ts).

import type { PreemptionPolicy } from "../../api/index.ts";

/** What a job asks of the quota: GPUs, CPU in millicores and memory in bytes. */
export interface Demand {
  gpus: number;
  cpu: number;
  memory: number;
}

export interface QueueQuota {
  name: string;
  gpus: number;
  /** Millicores; unlimited when undefined. */
  cpu?: number;
  /** Bytes; unlimited when undefined. */
  memory?: number;
  preemption: PreemptionPolicy;
}

/**
 * admitted: holds quota and may run. releasing: preempted (or otherwise un-admitted) but its
 * trainer is still stopping, so it still holds quota and cannot be preempted again.
 * pending: waits for admission.
 */
export type JobState = "admitted" | "releasing" | "pending";

export interface QueueJob {
  /** namespace/name. */
  key: string;
  priority: number;
  /** creationTimestamp in ms: arrival order. */
  createdAt: number;
  demand: Demand;
  state: JobState;
}

export interface WaitingJob {
  key: string;
  /** 1 for the next job to be admitted. */
  position: number;
  reason: string;
}

export interface AdmissionDecision {
  /** Pending jobs to admit now, in admission order. */
  admit: string[];
  /** Admitted jobs to stop so that `by` fits. */
  preempt: { key: string; by: string }[];
  /** Pending jobs that stay waiting, in admission order. */
  waiting: WaitingJob[];
  /** Pending jobs asking for more than the whole quota: they can never be admitted. */
  neverFit: { key: string; message: string }[];
  /** Quota held once the admissions are made (releasing and preempted jobs still count until they stop). */
  usage: Demand;
}

const ZERO: Demand = { gpus: 0, cpu: 0, memory: 0 };

const add = (a: Demand, b: Demand): Demand => ({ gpus: a.gpus + b.gpus, cpu: a.cpu + b.cpu, memory: a.memory + b.memory });
const subtract = (a: Demand, b: Demand): Demand => ({ gpus: a.gpus - b.gpus, cpu: a.cpu - b.cpu, memory: a.memory - b.memory });
const total = (jobs: readonly QueueJob[]): Demand => jobs.reduce((sum, job) => add(sum, job.demand), ZERO);

/** What of demand does not fit beside used, per resource (0 where it fits). */
function shortage(quota: QueueQuota, used: Demand, demand: Demand): Demand {
  const over = (limit: number | undefined, value: number) => (limit === undefined ? 0 : Math.max(0, value - limit));
  const after = add(used, demand);
  return { gpus: demand.gpus > 0 ? over(quota.gpus, after.gpus) : 0, cpu: demand.cpu > 0 ? over(quota.cpu, after.cpu) : 0, memory: demand.memory > 0 ? over(quota.memory, after.memory) : 0 };
}

const fits = (quota: QueueQuota, used: Demand, demand: Demand): boolean => {
  const missing = shortage(quota, used, demand);
  return missing.gpus === 0 && missing.cpu === 0 && missing.memory === 0;
};

/** Admission order: higher priority first, then earlier arrival (FIFO), then name, so that the order is total. */
export function admissionOrder(a: QueueJob, b: QueueJob): number {
  return b.priority - a.priority || a.createdAt - b.createdAt || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

/** Preemption order: lowest priority first, then the newest (it loses the least work), then name. */
function preemptionOrder(a: QueueJob, b: QueueJob): number {
  return a.priority - b.priority || b.createdAt - a.createdAt || (a.key < b.key ? 1 : a.key > b.key ? -1 : 0);
}

export function formatCpu(millicores: number): string {
  return millicores % 1000 === 0 ? String(millicores / 1000) : `${millicores}m`;
}

export function formatMemory(bytes: number): string {
  for (const [unit, size] of [["Ti", 2 ** 40], ["Gi", 2 ** 30], ["Mi", 2 ** 20], ["Ki", 2 ** 10]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

const plural = (count: number, word: string) => `${count} ${word}${count === 1 ? "" : "s"}`;

function describeDemand(demand: Demand): string {
  const parts = [
    ...(demand.gpus > 0 ? [plural(demand.gpus, "GPU")] : []),
    ...(demand.cpu > 0 ? [`${formatCpu(demand.cpu)} CPU`] : []),
    ...(demand.memory > 0 ? [`${formatMemory(demand.memory)} memory`] : []),
  ];
  return parts.join(" and ") || "nothing";
}

function names(jobs: readonly QueueJob[]): string {
  const keys = jobs.map((job) => job.key).sort();
  return keys.length > 5 ? `${keys.slice(0, 5).join(", ")} and ${keys.length - 5} more` : keys.join(", ");
}

function describeUsage(quota: QueueQuota, used: Demand, holders: readonly QueueJob[]): string {
  const parts = [`${used.gpus} of ${quota.gpus} GPUs in use`];
  if (quota.cpu !== undefined) parts.push(`${formatCpu(used.cpu)} of ${formatCpu(quota.cpu)} CPU`);
  if (quota.memory !== undefined) parts.push(`${formatMemory(used.memory)} of ${formatMemory(quota.memory)} memory`);
  return holders.length ? `${parts.join(", ")} by ${names(holders)}` : parts.join(", ");
}

/** Why a job can never fit, or undefined when the whole quota would hold it. */
function exceedsQuota(quota: QueueQuota, job: QueueJob): string | undefined {
  const missing = shortage(quota, ZERO, job.demand);
  const problems = [
    ...(missing.gpus > 0 ? [`${plural(job.demand.gpus, "GPU")} but the queue's whole quota is ${plural(quota.gpus, "GPU")}`] : []),
    ...(missing.cpu > 0 ? [`${formatCpu(job.demand.cpu)} CPU but the queue's whole quota is ${formatCpu(quota.cpu!)}`] : []),
    ...(missing.memory > 0 ? [`${formatMemory(job.demand.memory)} memory but the queue's whole quota is ${formatMemory(quota.memory!)}`] : []),
  ];
  if (problems.length === 0) return undefined;
  return `the job asks for ${problems.join(", and ")} (FineTuneQueue ${quota.name}): it could never be admitted; lower spec.resources or name a larger queue`;
}

/**
 * Decides admission for one queue. Pending jobs go in admission order (priority, then arrival,
 * then name) and strictly so: the first that does not fit blocks those behind it, as Kueue's
 * StrictFIFO, so that a large job is never starved by a stream of small ones. With preemption
 * LowerPriority that first job may preempt admitted jobs of strictly lower priority, the lowest
 * and then newest first, only as many as it needs, and only when that would make it fit; the
 * preempted jobs keep their quota until their trainer has stopped (they become releasing), and
 * the preemptor is admitted by a later call once they have.
 */
export function decideAdmission(quota: QueueQuota, jobs: readonly QueueJob[]): AdmissionDecision {
  const holders = jobs.filter((job) => job.state !== "pending");
  let used = total(holders);
  // Quota that comes back by itself once stopping trainers are gone.
  let releasing = total(jobs.filter((job) => job.state === "releasing"));
  const preemptible = jobs.filter((job) => job.state === "admitted").sort(preemptionOrder);
  const decision: AdmissionDecision = { admit: [], preempt: [], waiting: [], neverFit: [], usage: used };
  const admitted: QueueJob[] = [];
  let blockedBy: QueueJob | undefined;

  for (const job of jobs.filter((each) => each.state === "pending").sort(admissionOrder)) {
    const never = exceedsQuota(quota, job);
    if (never) {
      decision.neverFit.push({ key: job.key, message: never });
      continue;
    }
    const position = decision.waiting.length + 1;
    const usage = () => describeUsage(quota, used, [...holders, ...admitted]);
    if (blockedBy) {
      decision.waiting.push({ key: job.key, position, reason: `behind ${plural(position - 1, "job")} in admission order (next: ${blockedBy.key}); ${usage()}` });
      continue;
    }
    if (fits(quota, used, job.demand)) {
      decision.admit.push(job.key);
      admitted.push(job);
      used = add(used, job.demand);
      continue;
    }
    blockedBy = job;
    const missing = shortage(quota, used, job.demand);
    const waitingFor = `waiting for ${describeDemand(missing)}; ${usage()}`;
    if (fits(quota, subtract(used, releasing), job.demand)) {
      // Enough is already on its way back: preempting more would stop jobs for nothing.
      const stopping = jobs.filter((each) => each.state === "releasing" || decision.preempt.some((victim) => victim.key === each.key));
      decision.waiting.push({ key: job.key, position, reason: `${waitingFor}; waiting for preempted ${names(stopping)} to checkpoint and stop` });
      continue;
    }
    const victims = quota.preemption === "LowerPriority" ? chooseVictims(quota, subtract(used, releasing), job, preemptible) : undefined;
    if (!victims) {
      decision.waiting.push({ key: job.key, position, reason: waitingFor });
      continue;
    }
    for (const victim of victims) {
      decision.preempt.push({ key: victim.key, by: job.key });
      preemptible.splice(preemptible.indexOf(victim), 1);
    }
    releasing = add(releasing, total(victims));
    decision.waiting.push({ key: job.key, position, reason: `${waitingFor}; preempting ${names(victims)} (lower priority), which checkpoint and stop first` });
  }
  decision.usage = used;
  return decision;
}

/**
 * The fewest lower-priority admitted jobs to stop so that job fits beside what stays, taken in
 * preemption order; undefined when even all of them would not make room.
 */
function chooseVictims(quota: QueueQuota, used: Demand, job: QueueJob, preemptible: readonly QueueJob[]): QueueJob[] | undefined {
  const candidates = preemptible.filter((each) => each.priority < job.priority);
  const chosen: QueueJob[] = [];
  let remaining = used;
  for (const candidate of candidates) {
    if (fits(quota, remaining, job.demand)) break;
    // A victim that frees none of what is short would be stopped for nothing.
    const missing = shortage(quota, remaining, job.demand);
    const helps = (missing.gpus > 0 && candidate.demand.gpus > 0) || (missing.cpu > 0 && candidate.demand.cpu > 0) || (missing.memory > 0 && candidate.demand.memory > 0);
    if (!helps) continue;
    chosen.push(candidate);
    remaining = subtract(remaining, candidate.demand);
  }
  if (!fits(quota, remaining, job.demand)) return undefined;
  // Greedy in preemption order may overshoot (a large victim after small ones): keep any victim, the most valuable first, that is not needed.
  for (const victim of [...chosen].reverse()) {
    if (fits(quota, add(remaining, victim.demand), job.demand)) {
      chosen.splice(chosen.indexOf(victim), 1);
      remaining = add(remaining, victim.demand);
    }
  }
  return chosen;
}
