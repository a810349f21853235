import type { V1Pod } from "@kubernetes/client-node";
import {
  EXIT_CODE,
  applyDefaults,
  describeProblems,
  formatDuration,
  formatPercent,
  validate,
  PHASE_DOCS,
  type Condition,
  type ConditionType,
  type FineTuneJob,
  type FineTuneJobStatus,
  type Phase,
  type Reason,
} from "../../api/index.ts";
import {
  ANNOTATION_FAILURES_BEFORE,
  ANNOTATION_INTERRUPTIONS_BEFORE,
  ANNOTATION_RESUME_STEP,
  FINALIZER,
  LABEL_ATTEMPT,
  LABEL_COMPONENT,
  preflightPod,
  preflightPodName,
  trainerPod,
  trainerPodName,
  type PodSettings,
} from "./pods.ts";
import { queueGate } from "../queue/gate.ts";

/**
 * The reconcile decision for one FineTuneJob, as a pure function of what the cluster shows:
 * the job and the pods it owns. Nothing is remembered between calls; every fact the decision
 * needs (attempt numbers, failures counted so far, when a pod got stuck) is read back from
 * the objects themselves, so a restarted operator decides exactly as the old one would have.
 */

export interface DecideSettings extends PodSettings {
  /** Run a CPU-only preflight pod before the first trainer pod. */
  preflight: boolean;
  /** A pod stuck pulling its image (ImagePullFailed) or configuring its container (ContainerConfigError) this long fails the job. */
  imagePullTimeoutSeconds: number;
  /** A pod the scheduler cannot place this long fails the job with Unschedulable. */
  unschedulableTimeoutSeconds: number;
  /** Delay before retry n is base * 2^(n-1), capped at max; interruptions in a row without progress back off the same way. */
  retryBackoffBaseSeconds: number;
  retryBackoffMaxSeconds: number;
  /**
   * Interruptions (evictions, preemptions, SIGTERM stops with exit 75) in a row that saved no new
   * checkpoint before the job fails with InterruptedWithoutProgress; DEFAULT_INTERRUPTION_LIMIT when unset.
   */
  interruptionLimit?: number;
}

/**
 * Interruptions do not count against backoffLimit (the trainer did nothing wrong), but a job
 * whose pods are evicted over and over before they checkpoint would otherwise hold a retry loop
 * for ever: after this many in a row without a new checkpoint it fails.
 */
export const DEFAULT_INTERRUPTION_LIMIT = 10;

export type Action =
  | { kind: "removeFinalizer" }
  | { kind: "createPod"; pod: V1Pod }
  | { kind: "deletePod"; name: string }
  | { kind: "deleteJob" };

export interface JobEvent {
  type: "Normal" | "Warning";
  reason: Reason | string;
  message: string;
}

export interface Decision {
  actions: Action[];
  /** The status to write; undefined when the job is being deleted. */
  status?: FineTuneJobStatus;
  events: JobEvent[];
  /** Reconcile again after this long, for timeouts and backoffs that no watch event signals. */
  requeueAfterSeconds?: number;
}

/** Reasons after which retrying cannot help: the inputs or the spec must change. */
const PERMANENT_REASONS = new Set<string>(["InvalidSpec", "InvalidDataset", "ModelNotFound", "StorageAccessDenied", "InvalidModel", "BackendUnavailable"]);

/** How a finished or vanished attempt ended. */
interface Outcome {
  reason: Reason;
  message: string;
  /** Counts against backoffLimit (preemption and eviction do not). */
  countsAsFailure: boolean;
  permanent: boolean;
  finishedAt?: Date;
}

export function decide(job: FineTuneJob, pods: V1Pod[], now: Date, settings: DecideSettings): Decision {
  const decision = decideLifecycle(job, pods, now, settings);
  if (decision.status) decision.status = withSummaryConditions(decision.status, job.metadata.generation, now);
  // Nothing need change when the deadline passes (a trainer may stop reporting): come back then, as the Job controller does.
  const deadline = deadlineRemaining(job, decision.status, now);
  if (deadline !== undefined) decision.requeueAfterSeconds = Math.min(decision.requeueAfterSeconds ?? deadline, deadline);
  return decision;
}

function decideLifecycle(job: FineTuneJob, pods: V1Pod[], now: Date, settings: DecideSettings): Decision {
  const name = job.metadata.name!;
  const actions: Action[] = [];
  const events: JobEvent[] = [];
  const current = job.status ?? {};
  const trainers = pods
    .filter((pod) => pod.metadata?.labels?.[LABEL_COMPONENT] === "trainer")
    .sort((a, b) => attemptOf(a) - attemptOf(b));
  const preflight = pods.find((pod) => pod.metadata?.name === preflightPodName(name));
  const active = pods.filter((pod) => !isFinished(pod) && !pod.metadata?.deletionTimestamp);

  // The operator puts no finalizer on its jobs: the pods carry an ownerReference to the job, so the garbage collector
  // deletes them (gracefully: the trainer checkpoints on SIGTERM) once the job is gone, as it does a Job's pods. Jobs
  // made by earlier versions of the operator still hold kubetune.io/finalizer: it is taken off (after their pods, when deleting).
  const legacyFinalizer = job.metadata.finalizers?.includes(FINALIZER) ?? false;
  if (job.metadata.deletionTimestamp) {
    // Being deleted (another finalizer, or foreground deletion, keeps it a while): start nothing, stop every pod.
    for (const pod of pods) if (!pod.metadata?.deletionTimestamp) actions.push({ kind: "deletePod", name: pod.metadata!.name! });
    if (legacyFinalizer && pods.length === 0) actions.push({ kind: "removeFinalizer" });
    return { actions, events, requeueAfterSeconds: legacyFinalizer && pods.length ? 2 : undefined };
  }
  if (legacyFinalizer) actions.push({ kind: "removeFinalizer" });

  const status: FineTuneJobStatus = { ...current, observedGeneration: job.metadata.generation };
  const setCondition = (type: ConditionType, value: "True" | "False", reason: Reason, message: string) => {
    status.conditions = withCondition(status.conditions ?? [], { type, status: value, reason, message, lastTransitionTime: now.toISOString(), observedGeneration: job.metadata.generation }, now);
  };
  const finish = (phase: "Succeeded" | "Failed", reason: Reason, message: string): Decision => {
    for (const pod of active) actions.push({ kind: "deletePod", name: pod.metadata!.name! });
    status.phase = phase;
    status.completionTime = current.completionTime ?? now.toISOString();
    if (phase === "Succeeded") {
      setCondition("Succeeded", "True", reason, message);
      if (status.progress) status.progress = { ...status.progress, percent: 100, percentText: formatPercent(100), etaSeconds: 0, eta: formatDuration(0) };
    } else {
      setCondition("Failed", "True", reason, message);
    }
    setCondition("Running", "False", reason, message);
    if (current.phase !== phase) events.push({ type: phase === "Succeeded" ? "Normal" : "Warning", reason, message });
    return { actions, status, events, requeueAfterSeconds: ttlRemaining(job, status, now) };
  };

  // Finished jobs only wait for their TTL.
  if (current.phase === "Succeeded" || current.phase === "Failed") {
    for (const pod of active) actions.push({ kind: "deletePod", name: pod.metadata!.name! });
    const remaining = ttlRemaining(job, status, now);
    if (remaining === 0) actions.push({ kind: "deleteJob" });
    return { actions, status, events, requeueAfterSeconds: remaining || undefined };
  }

  // The API server may not enforce CEL (older versions ignore it): check every rule here too.
  const problems = [...validate(job), ...clusterOnlyProblems(job)];
  if (problems.length > 0) return finish("Failed", "InvalidSpec", describeProblems(problems));
  const spec = applyDefaults(job.spec);

  const deadline = spec.runPolicy.activeDeadlineSeconds;
  // The clock stops while the job is suspended or not admitted by its queue (a preempted trainer still stopping included),
  // and starts again when it leaves either state (startTime below), as the Job controller's does for a suspended Job
  // (which is how Kueue preempts one).
  const clockStopped = current.phase === "Suspended" || current.phase === "Queued" || queueGate(job).kind === "wait";
  if (deadline !== undefined && current.startTime && !clockStopped && now.getTime() - Date.parse(current.startTime) > deadline * 1000) {
    return finish("Failed", "DeadlineExceeded", `the job ran longer than runPolicy.activeDeadlineSeconds (${deadline}s)`);
  }

  // Suspended: stop the trainer (SIGTERM makes it checkpoint) and hold.
  if (spec.runPolicy.suspend) {
    for (const pod of active) actions.push({ kind: "deletePod", name: pod.metadata!.name! });
    status.phase = "Suspended";
    if (current.phase !== "Suspended") {
      const message = active.length ? "the trainer is saving a checkpoint and stopping" : "the job is held until runPolicy.suspend is false";
      setCondition("Suspended", "True", "Suspended", message);
      setCondition("Running", "False", "Suspended", message);
      events.push({ type: "Normal", reason: "Suspended", message });
    }
    return { actions, status, events };
  }
  // A queue (a FineTuneQueue, or Kueue) decides admission and records it on the Admitted condition (operator/queue):
  // no pod runs before it, and the pods stop when the admission is taken back.
  const gate = queueGate(job);
  if (gate.kind === "fail") return finish("Failed", gate.reason, gate.message);
  if (gate.kind === "wait") {
    // A graceful delete: SIGTERM, the trainer checkpoints. The pod then vanishes, which the next attempt counts as an
    // interruption, never as a failure.
    for (const pod of active) actions.push({ kind: "deletePod", name: pod.metadata!.name! });
    const stopping = pods.some((pod) => !isFinished(pod));
    // Queued only once no pod runs: the queue controller keeps a preempted job's quota until then.
    status.phase = stopping ? (current.phase ?? "Pending") : "Queued";
    if (current.phase === "Suspended") setCondition("Suspended", "False", "Resumed", "runPolicy.suspend is false: the job waits in its queue, then resumes from the last checkpoint");
    // Until the queue controller has seen the job, say which queue it waits for (the queue's own condition replaces this).
    if (!status.conditions?.some((condition) => condition.type === "Admitted")) setCondition("Admitted", "False", "Queued", gate.message);
    if (gate.preempted && status.conditions?.some((condition) => condition.type === "Running")) {
      setCondition("Running", "False", "Preempted", stopping ? `${gate.message} (stopping)` : gate.message);
    }
    return { actions, status, events, requeueAfterSeconds: stopping ? 2 : undefined };
  }
  const resuming = current.phase === "Suspended";
  // startTime marks when the job became active (preflight included), so that activeDeadlineSeconds counts every pod,
  // started or stuck; a resume, or an admission after waiting in the queue (a preemption), starts it again, as the Job
  // controller does on unsuspending, so that suspended and queued time do not count.
  status.startTime = resuming || current.phase === "Queued" || !current.startTime ? now.toISOString() : current.startTime;
  if (resuming) {
    setCondition("Suspended", "False", "Resumed", "runPolicy.suspend is false: training resumes from the last checkpoint");
    events.push({ type: "Normal", reason: "Resumed", message: "training resumes from the last checkpoint" });
  }

  // Preflight: check the inputs on a small CPU pod before the first trainer pod holds a GPU.
  const preflightPassed = status.conditions?.some((condition) => condition.type === "PreflightChecked" && condition.status === "True");
  if (settings.preflight && !preflightPassed && trainers.length === 0) {
    status.phase = "Pending";
    if (!preflight) {
      actions.push({ kind: "createPod", pod: preflightPod(job, spec, settings) });
      setCondition("PreflightChecked", "False", "PreflightRunning", "checking that the model, tokenizer and dataset exist and parse");
      return { actions, status, events };
    }
    if (preflight.status?.phase === "Succeeded") {
      setCondition("PreflightChecked", "True", "PreflightPassed", "the model, tokenizer and dataset exist and parse");
      actions.push({ kind: "deletePod", name: preflight.metadata!.name! });
      events.push({ type: "Normal", reason: "PreflightPassed", message: "the model, tokenizer and dataset exist and parse" });
    } else if (preflight.status?.phase === "Failed") {
      const outcome = outcomeOf(preflight);
      setCondition("PreflightChecked", "False", outcome.reason, `preflight: ${outcome.message}`);
      return finish("Failed", outcome.reason, `preflight: ${outcome.message}`);
    } else {
      const stuck = stuckReason(preflight, now, settings);
      if (stuck) {
        setCondition("PreflightChecked", "False", stuck.reason, `preflight pod: ${stuck.message}`);
        return finish("Failed", stuck.reason, `preflight pod: ${stuck.message}`);
      }
      return { actions, status, events, requeueAfterSeconds: stuckCheckDelay(settings) };
    }
  }

  const latest = trainers.at(-1);
  const attempt = latest ? attemptOf(latest) : 0;
  status.attempts = Math.max(current.attempts ?? 0, attempt);
  // Failures before the newest attempt: its pod's annotation, or status when the pods are gone (deleting them must not
  // reset backoffLimit). Status may already count a failed newest attempt, so it counts one less then; the larger wins.
  const statusBefore = Math.max(0, (current.failedAttempts ?? 0) - (latest && isFinished(latest) && outcomeOf(latest).countsAsFailure ? 1 : 0));
  let failures = Math.max(statusBefore, latest ? Number(latest.metadata?.annotations?.[ANNOTATION_FAILURES_BEFORE] ?? 0) : 0);
  status.failedAttempts = failures;

  if (latest && !latest.metadata?.deletionTimestamp && !isFinished(latest)) {
    // An attempt is under way.
    const stuck = stuckReason(latest, now, settings);
    if (stuck) return finish("Failed", stuck.reason, stuck.message);
    status.phase = "Running";
    const running = latest.status?.phase === "Running";
    setCondition("Running", running ? "True" : "False", running ? "Training" : "PodCreated", running ? `attempt ${attempt} is training` : `attempt ${attempt} is starting`);
    return { actions, status, events, requeueAfterSeconds: running ? undefined : stuckCheckDelay(settings) };
  }
  if (latest?.metadata?.deletionTimestamp) {
    // Being stopped (we asked, or someone else did): wait for it to go.
    status.phase = "Running";
    return { actions, status, events, requeueAfterSeconds: 2 };
  }

  if (latest?.status?.phase === "Succeeded") return finish("Succeeded", "Completed", `attempt ${attempt} finished; outputs are in ${spec.output.uri}`);

  let retryReason: Reason | undefined;
  let retryMessage = "";
  let history = { interruptionsBefore: 0, resumeStep: current.lastCheckpoint?.step ?? 0 };
  if (latest || (current.attempts ?? 0) > 0) {
    // The latest attempt failed, or its pod vanished (deleted, evicted, node lost), or we stopped it for a suspension.
    const outcome: Outcome = latest
      ? outcomeOf(latest)
      : resuming
        ? { reason: "Resumed", message: "resuming after suspension", countsAsFailure: false, permanent: false }
        : { reason: "Preempted", message: `the pod of attempt ${current.attempts} disappeared (deleted or evicted)`, countsAsFailure: false, permanent: false };
    if (outcome.permanent) return finish("Failed", outcome.reason, outcome.message);
    if (outcome.countsAsFailure) failures += 1;
    status.failedAttempts = failures;
    if (failures > spec.runPolicy.backoffLimit) {
      return finish("Failed", "BackoffLimitExceeded", `${failures} attempts failed, more than runPolicy.backoffLimit (${spec.runPolicy.backoffLimit}) allows; the last: ${outcome.reason}: ${outcome.message}`);
    }
    // Interruptions in a row that saved no checkpoint: counted on the pods, as failures are (a vanished pod's count is lost).
    const interruptions = latest && outcome.reason === "Preempted" ? interruptionStreak(latest, current) : 0;
    history = { interruptionsBefore: interruptions, resumeStep: current.lastCheckpoint?.step ?? 0 };
    const limit = settings.interruptionLimit ?? DEFAULT_INTERRUPTION_LIMIT;
    if (interruptions > limit) {
      return finish(
        "Failed",
        "InterruptedWithoutProgress",
        `the trainer was interrupted ${interruptions} times in a row without saving a new checkpoint (more than the operator's limit of ${limit}); ` +
          `the last: ${outcome.message}. Check what evicts or stops the pods (node pressure, preemption by higher priority, spot reclaims), or checkpoint more often (checkpoint.everySteps)`,
      );
    }
    // Failures back off by their count; interruptions by their streak, so that a productive attempt's eviction retries at once.
    const backoffCount = outcome.countsAsFailure ? failures : interruptions;
    if (backoffCount > 0 && outcome.finishedAt) {
      const delay = Math.min(settings.retryBackoffMaxSeconds, settings.retryBackoffBaseSeconds * 2 ** (backoffCount - 1));
      const waitSeconds = (outcome.finishedAt.getTime() + delay * 1000 - now.getTime()) / 1000;
      if (waitSeconds > 0) {
        status.phase = "Running";
        const ended = outcome.countsAsFailure ? "failed" : `was interrupted, ${interruptions} time(s) in a row without a new checkpoint`;
        setCondition("Running", "False", "Retrying", `attempt ${attempt} ${ended} (${outcome.reason}: ${outcome.message}); retrying in ${Math.ceil(waitSeconds)}s from the last checkpoint`);
        return { actions, status, events, requeueAfterSeconds: Math.ceil(waitSeconds) };
      }
    }
    retryReason = outcome.reason;
    retryMessage = outcome.message;
  }

  // Start the next attempt; it resumes from the newest checkpoint by itself.
  const next = Math.max(attempt, current.attempts ?? 0) + 1;
  actions.push({ kind: "createPod", pod: trainerPod(job, spec, next, failures, settings, history) });
  status.attempts = next;
  status.phase = "Running";
  setCondition("Running", "False", "PodCreated", `attempt ${next} is starting`);
  if (retryReason && retryReason !== "Resumed") {
    events.push({ type: "Warning", reason: "Retrying", message: `attempt ${next - 1} ended (${retryReason}: ${retryMessage}); attempt ${next} resumes from the last checkpoint` });
  }
  events.push({ type: "Normal", reason: "PodCreated", message: `created trainer pod ${trainerPodName(name, next)} (attempt ${next})` });
  return { actions, status, events, requeueAfterSeconds: stuckCheckDelay(settings) };
}

/**
 * The decision when an object the job needs exists under the job's fixed name but is not the
 * job's own: fail, naming it, rather than take it over (and later delete it with the job) or
 * wait for it forever.
 */
export function decideNameConflict(job: FineTuneJob, object: { kind: string; name: string; owner?: string }, now: Date): Decision {
  const current = job.status ?? {};
  const message = `${object.kind} ${job.metadata.namespace}/${object.name} already exists and belongs to ${object.owner ?? "no FineTuneJob"}, not to this job; the operator does not take it over: delete or rename it, then recreate the job`;
  let conditions = current.conditions ?? [];
  for (const type of ["Failed", "Running"] as const) {
    conditions = withCondition(conditions, { type, status: type === "Failed" ? "True" : "False", reason: "NameConflict", message, lastTransitionTime: now.toISOString(), observedGeneration: job.metadata.generation }, now);
  }
  const status: FineTuneJobStatus = { ...current, observedGeneration: job.metadata.generation, phase: "Failed", completionTime: current.completionTime ?? now.toISOString(), conditions };
  return {
    actions: [],
    status: withSummaryConditions(status, job.metadata.generation, now),
    events: current.phase === "Failed" ? [] : [{ type: "Warning", reason: "NameConflict", message }],
    requeueAfterSeconds: ttlRemaining(job, status, now),
  };
}

/**
 * A pod under the job's fixed name belongs to an earlier FineTuneJob of the same name (deleted, then created again,
 * before the garbage collector removed its pods). Unlike a NameConflict, it is the operator's own pod of a job that is
 * gone: the controller has asked for its deletion (as the garbage collector would), and this attempt starts once it
 * is gone, so two trainers never share the job's checkpoint and output.
 */
export function decideEarlierJobPod(job: FineTuneJob, object: { kind: string; name: string; owner?: string }, now: Date): Decision {
  const current = job.status ?? {};
  const message = `${object.kind} ${job.metadata.namespace}/${object.name} still belongs to ${object.owner ?? "an earlier FineTuneJob"}, an earlier job of this name that was deleted; it is being deleted, and this job starts once it is gone`;
  const conditions = withCondition(current.conditions ?? [], { type: "Running", status: "False", reason: "EarlierJobPodTerminating", message, lastTransitionTime: now.toISOString(), observedGeneration: job.metadata.generation }, now);
  const status: FineTuneJobStatus = { ...current, observedGeneration: job.metadata.generation, phase: current.phase ?? "Pending", conditions };
  const waiting = current.conditions?.some((condition) => condition.reason === "EarlierJobPodTerminating");
  return {
    actions: [],
    status: withSummaryConditions(status, job.metadata.generation, now),
    events: waiting ? [] : [{ type: "Normal", reason: "EarlierJobPodTerminating", message }],
    // The pod's deletion wakes the job (its pods are watched by the job-name label); the requeue is a backstop.
    requeueAfterSeconds: 5,
  };
}

/** Rules the schema cannot express: a pod in a cluster cannot read this machine's files. */
function clusterOnlyProblems(job: FineTuneJob): { path: string; message: string }[] {
  const problems: { path: string; message: string }[] = [];
  const check = (path: string, uri: string | undefined) => {
    if (uri !== undefined && !uri.startsWith("s3://")) problems.push({ path, message: `must be an s3:// URI in a cluster: the trainer pod cannot read ${JSON.stringify(uri)} (local paths are for kubetune run)` });
  };
  check("spec.baseModel.uri", job.spec?.baseModel?.uri);
  check("spec.dataset.train", job.spec?.dataset?.train);
  check("spec.dataset.eval", job.spec?.dataset?.eval);
  check("spec.output.uri", job.spec?.output?.uri);
  check("spec.checkpoint.uri", job.spec?.checkpoint?.uri);
  return problems;
}

function attemptOf(pod: V1Pod): number {
  return Number(pod.metadata?.labels?.[LABEL_ATTEMPT] ?? 0);
}

function isFinished(pod: V1Pod): boolean {
  return pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed";
}

/** Reads why a pod failed: the trainer's "Reason: message" termination line, OOM, eviction, or its log tail. */
function outcomeOf(pod: V1Pod): Outcome {
  const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated;
  const finishedAt = finishedAtOf(pod);
  const podReason = pod.status?.reason;
  if (podReason === "Evicted" || podReason === "Preempted" || podReason === "NodeLost" || podReason === "Shutdown") {
    return { reason: "Preempted", message: pod.status?.message ?? `the pod was ${podReason.toLowerCase()}`, countsAsFailure: false, permanent: false, finishedAt };
  }
  if (terminated?.exitCode === EXIT_CODE.stopped) {
    // SIGTERM from outside (a node drain, a preemption): the trainer saved a checkpoint and left.
    return { reason: "Preempted", message: "the trainer was stopped by SIGTERM and saved a checkpoint", countsAsFailure: false, permanent: false, finishedAt };
  }
  if (terminated?.reason === "OOMKilled") {
    return { reason: "OOMKilled", message: "the trainer exceeded its memory limit: raise resources.memory or lower batchSize or maxSeqLength", countsAsFailure: true, permanent: false, finishedAt };
  }
  const text = (terminated?.message ?? "").trim();
  // The trainer and preflight end with "Reason: message" lines; the newest permanent one decides.
  const tagged = text
    .split("\n")
    .reverse()
    .map((line) => /^([A-Z][A-Za-z]+): (.*)$/.exec(line.trim()))
    .find((match) => match && PERMANENT_REASONS.has(match[1]!));
  if (tagged) {
    const reason = (tagged[1] === "InvalidModel" ? "ModelNotFound" : tagged[1]) as Reason;
    return { reason, message: tagged[2]!, countsAsFailure: true, permanent: true, finishedAt };
  }
  const exitCode = terminated?.exitCode;
  const lastLine = text.split("\n").map((line) => line.trim()).filter(Boolean).at(-1);
  const message =
    exitCode !== undefined && exitCode > 128
      ? `the trainer was killed by signal ${exitCode - 128} (exit code ${exitCode})`
      : lastLine
        ? `exit code ${exitCode ?? "unknown"}: ${lastLine.slice(0, 512)}`
        : `the trainer exited with code ${exitCode ?? "unknown"}`;
  return { reason: "TrainerFailed", message, countsAsFailure: true, permanent: false, finishedAt };
}

/**
 * Interruptions in a row without progress, the given interrupted attempt included: the count
 * its pod was created with, plus one unless the job's newest checkpoint is newer than the one
 * the attempt resumed from (it made progress, and the streak starts again at 0).
 */
function interruptionStreak(pod: V1Pod, status: FineTuneJobStatus): number {
  const before = Number(pod.metadata?.annotations?.[ANNOTATION_INTERRUPTIONS_BEFORE] ?? 0);
  const resumeStep = Number(pod.metadata?.annotations?.[ANNOTATION_RESUME_STEP] ?? 0);
  const progressed = (status.lastCheckpoint?.step ?? 0) > resumeStep;
  return progressed ? 0 : before + 1;
}

/**
 * When the attempt ended, for its backoff: the container's end, else (an evicted pod whose
 * container state the kubelet did not report) the newest change of its conditions, else its
 * creation. Never "now": a backoff counted from each reconcile would never end.
 */
function finishedAtOf(pod: V1Pod): Date | undefined {
  const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated?.finishedAt;
  if (terminated) return new Date(terminated);
  const times = (pod.status?.conditions ?? []).map((condition) => Date.parse(String(condition.lastTransitionTime ?? ""))).filter((time) => Number.isFinite(time));
  if (times.length) return new Date(Math.max(...times));
  const created = Date.parse(String(pod.metadata?.creationTimestamp ?? ""));
  return Number.isFinite(created) ? new Date(created) : undefined;
}

/** A pod that cannot start for long enough fails the job with the matching reason. */
function stuckReason(pod: V1Pod, now: Date, settings: DecideSettings): { reason: Reason; message: string } | undefined {
  const waiting = pod.status?.containerStatuses?.[0]?.state?.waiting;
  const created = Date.parse(String(pod.metadata?.creationTimestamp ?? now.toISOString()));
  if (waiting && ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"].includes(waiting.reason ?? "")) {
    if (now.getTime() - created > settings.imagePullTimeoutSeconds * 1000) {
      return { reason: "ImagePullFailed", message: `${waiting.reason}: ${waiting.message ?? ""} (for more than ${settings.imagePullTimeoutSeconds}s); check trainer.image and its pull secret`.trim() };
    }
  }
  if (waiting?.reason === "CreateContainerConfigError" || waiting?.reason === "CreateContainerError") {
    // The kubelet sets no startTime on such a pod; the timeout counts from its creation.
    if (now.getTime() - created > settings.imagePullTimeoutSeconds * 1000) {
      return { reason: "ContainerConfigError", message: `${waiting.reason}: ${waiting.message ?? ""} (for more than ${settings.imagePullTimeoutSeconds}s); check that the Secrets the job references exist and hold the keys it names`.trim() };
    }
  }
  const scheduled = pod.status?.conditions?.find((condition) => condition.type === "PodScheduled");
  if (scheduled?.status === "False" && scheduled.reason === "Unschedulable") {
    const since = Date.parse(String(scheduled.lastTransitionTime ?? created));
    if (now.getTime() - since > settings.unschedulableTimeoutSeconds * 1000) {
      return { reason: "Unschedulable", message: `${scheduled.message ?? "no node fits the pod"} (for more than ${settings.unschedulableTimeoutSeconds}s); check resources, nodeSelector, tolerations and affinity` };
    }
  }
  return undefined;
}

function stuckCheckDelay(settings: DecideSettings): number {
  return Math.max(1, Math.min(settings.imagePullTimeoutSeconds, settings.unschedulableTimeoutSeconds) / 4);
}

/** Seconds until an active job is past runPolicy.activeDeadlineSeconds; undefined while no clock runs (queued, suspended, finished). */
function deadlineRemaining(job: FineTuneJob, status: FineTuneJobStatus | undefined, now: Date): number | undefined {
  const deadline = job.spec?.runPolicy?.activeDeadlineSeconds;
  if (deadline === undefined || !status?.startTime || (status.phase !== "Pending" && status.phase !== "Running")) return undefined;
  // A whole second more: the deadline check fails a job only once more than the deadline has passed. At most a day: a
  // later reconcile looks again, and a timer of more than 24.8 days (the spec allows a year) would fire at once.
  return Math.min(86_400, Math.max(1, Math.floor((Date.parse(status.startTime) + deadline * 1000 - now.getTime()) / 1000) + 1));
}

function ttlRemaining(job: FineTuneJob, status: FineTuneJobStatus, now: Date): number | undefined {
  const ttl = job.spec?.runPolicy?.ttlSecondsAfterFinished;
  if (ttl === undefined || !status.completionTime) return undefined;
  return Math.max(0, Math.ceil((Date.parse(status.completionTime) + ttl * 1000 - now.getTime()) / 1000));
}

/**
 * Ready, Reconciling and Stalled: the summary conditions kstatus (Flux, kpt, cli-utils) reads,
 * derived from the phase. Each carries the reason and message of the condition that decides
 * the phase now, so `kubectl wait --for=condition=Ready` and Flux say why a job is not ready.
 */
export function withSummaryConditions(status: FineTuneJobStatus, generation: number | undefined, now: Date): FineTuneJobStatus {
  const phase = status.phase ?? "Pending";
  // The condition that explains each phase, most telling first.
  const deciding: Partial<Record<Phase, ConditionType[]>> = {
    Succeeded: ["Succeeded"],
    Failed: ["Failed"],
    Suspended: ["Suspended"],
  };
  const cause = (deciding[phase] ?? ["Running", "Admitted", "PreflightChecked"])
    .map((type) => status.conditions?.find((condition) => condition.type === type))
    .find((condition) => condition !== undefined);
  const reason = cause?.reason ?? phase;
  const message = cause?.message ?? PHASE_DOCS[phase];
  const progressing = phase === "Pending" || phase === "Queued" || phase === "Running";
  let conditions = status.conditions ?? [];
  const set = (type: ConditionType, value: boolean) => {
    conditions = withCondition(conditions, { type, status: value ? "True" : "False", reason, message, lastTransitionTime: now.toISOString(), observedGeneration: generation }, now);
  };
  set("Ready", phase === "Succeeded");
  set("Reconciling", progressing);
  set("Stalled", phase === "Failed");
  // The summaries last, in a fixed order, so that kubectl describe lists the conditions they sum up first.
  const summaries = ["Ready", "Reconciling", "Stalled"];
  conditions = [...conditions.filter((c) => !summaries.includes(c.type)), ...summaries.map((type) => conditions.find((c) => c.type === type)!)];
  return { ...status, conditions };
}

/** Sets a condition, keeping lastTransitionTime when its status did not change (metav1 semantics). */
export function withCondition(conditions: Condition[], condition: Condition, now: Date): Condition[] {
  const existing = conditions.find((entry) => entry.type === condition.type);
  const lastTransitionTime = existing && existing.status === condition.status ? existing.lastTransitionTime : now.toISOString();
  const updated = { ...condition, lastTransitionTime };
  return existing ? conditions.map((entry) => (entry.type === condition.type ? updated : entry)) : [...conditions, updated];
}

/** The phase a status shows, for metrics. */
export function phaseOf(job: FineTuneJob): Phase {
  return job.status?.phase ?? "Pending";
}
