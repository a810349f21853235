// What the FineTuneJob controller reads of a queue's decision: the job's Admitted condition, set
// by the queue controller (controller.ts for a FineTuneQueue, kueue.ts for a Kueue LocalQueue).
// The job controller never decides admission; it only starts a trainer pod once admitted and
// stops it (SIGTERM, so that it checkpoints) once the admission is taken back.

import type { FineTuneJob, Reason } from "../../api/index.ts";

export type QueueGate =
  /** No queue, or admitted: the job runs as without a queue. */
  | { kind: "run" }
  /** The queue found that the job can never be admitted. */
  | { kind: "fail"; reason: Reason; message: string }
  /** Not admitted (yet, or any more): no trainer pod may run; `preempted` when the admission was taken back. */
  | { kind: "wait"; reason: Reason; message: string; preempted: boolean };

/** Reasons of Admitted=False after which the job fails rather than waits. */
const FAILING: ReadonlySet<string> = new Set<Reason>(["ExceedsQueueQuota"]);

export function queueGate(job: FineTuneJob): QueueGate {
  const queue = job.spec?.queueName;
  if (queue === undefined) return { kind: "run" };
  const admitted = job.status?.conditions?.find((condition) => condition.type === "Admitted");
  if (admitted?.status === "True") return { kind: "run" };
  if (admitted && FAILING.has(admitted.reason)) return { kind: "fail", reason: admitted.reason as Reason, message: admitted.message };
  if (!admitted) return { kind: "wait", reason: "Queued", message: `waiting for queue ${queue} to admit the job`, preempted: false };
  const preempted = admitted.reason === "Preempted";
  return { kind: "wait", reason: preempted ? "Preempted" : "Queued", message: admitted.message, preempted };
}
