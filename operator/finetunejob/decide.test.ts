import type { V1Pod } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { decide, decideEarlierJobPod, decideNameConflict, type DecideSettings } from "./decide.ts";
import { FINALIZER, trainerPod, preflightPod } from "./pods.ts";
import { applyDefaults } from "../../api/index.ts";

const settings: DecideSettings = {
  defaultImage: "ghcr.io/kubetune/kubetune-trainer-cpu:test",
  gpuImage: "ghcr.io/kubetune/kubetune-trainer-gpu:test",
  preflightImage: "ghcr.io/kubetune/kubetune-operator:test",
  progressUrl: "https://operator.kubetune-system.svc:8443",
  terminationGraceSeconds: 120,
  preflight: true,
  imagePullTimeoutSeconds: 60,
  unschedulableTimeoutSeconds: 120,
  retryBackoffBaseSeconds: 10,
  retryBackoffMaxSeconds: 300,
};
const now = new Date("2026-11-28T12:00:00Z");
const seconds = (n: number) => new Date(now.getTime() + n * 1000);

function job(overrides: { spec?: Record<string, unknown>; status?: FineTuneJob["status"]; deleting?: boolean; finalizers?: string[] } = {}): FineTuneJob {
  return {
    apiVersion: "kubetune.io/v1alpha1",
    kind: "FineTuneJob",
    metadata: { name: "tune", namespace: "team-a", uid: "uid-1", generation: 1, ...(overrides.finalizers ? { finalizers: overrides.finalizers } : {}), ...(overrides.deleting ? { deletionTimestamp: now.toISOString() } : {}) },
    spec: {
      baseModel: { uri: "s3://models/smollm" },
      dataset: { train: "s3://data/train.jsonl" },
      method: { type: "lora" },
      output: { uri: "s3://out/tune" },
      storage: { secretRef: { name: "s3-creds" } },
      resources: { gpus: 1, memory: "16Gi" },
      ...overrides.spec,
    },
    status: overrides.status,
  } as FineTuneJob;
}

const preflightPassed = { type: "PreflightChecked", status: "True", reason: "PreflightPassed", message: "", lastTransitionTime: now.toISOString() } as const;

function podOf(j: FineTuneJob, attempt: number, phase: string, extra: Partial<V1Pod["status"]> = {}, failuresBefore = 0): V1Pod {
  const pod = trainerPod(j, applyDefaults(j.spec), attempt, failuresBefore, settings);
  pod.metadata!.creationTimestamp = now.toISOString() as never;
  pod.status = { phase, ...extra };
  return pod;
}

function failed(j: FineTuneJob, attempt: number, terminated: object, failuresBefore = 0, finishedAt = now): V1Pod {
  return podOf(j, attempt, "Failed", { containerStatuses: [{ name: "trainer", image: "", imageID: "", ready: false, restartCount: 0, state: { terminated: { exitCode: 1, finishedAt: finishedAt.toISOString(), ...terminated } } } as never] }, failuresBefore);
}

describe("decide", () => {
  it("starts with a preflight pod, before any trainer pod, and puts no finalizer on the job (its pods are garbage-collected with it)", () => {
    const decision = decide(job(), [], now, settings);
    expect(decision.actions.map((action) => action.kind)).toEqual(["createPod"]);
    const pod = (decision.actions[0] as { pod: V1Pod }).pod;
    expect(pod.metadata?.ownerReferences).toEqual([expect.objectContaining({ kind: "FineTuneJob", name: "tune", uid: "uid-1", controller: true, blockOwnerDeletion: true })]);
    expect(pod.metadata?.name).toBe("tune-preflight");
    expect(pod.spec?.containers[0]?.image).toBe("ghcr.io/kubetune/kubetune-operator:test");
    expect(pod.spec?.containers[0]?.resources?.limits?.["nvidia.com/gpu"]).toBeUndefined();
    expect(decision.status?.phase).toBe("Pending");
  });

  it("fails at once with the preflight's reason, naming the file and line", () => {
    const j = job();
    const pod = preflightPod(j, applyDefaults(j.spec), settings);
    pod.status = { phase: "Failed", containerStatuses: [{ state: { terminated: { exitCode: 1, message: "InvalidDataset: s3://data/train.jsonl:3: missing field \"output\"" } } } as never] };
    const decision = decide(j, [pod], now, settings);
    expect(decision.status?.phase).toBe("Failed");
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")).toMatchObject({ reason: "InvalidDataset", message: 'preflight: s3://data/train.jsonl:3: missing field "output"' });
    expect(decision.actions.some((action) => action.kind === "createPod")).toBe(false);
  });

  it("creates attempt 1 once preflight passed, with a restricted, credential-free pod spec", () => {
    const decision = decide(job({ status: { conditions: [preflightPassed] } }), [], now, settings);
    const pod = (decision.actions.find((action) => action.kind === "createPod") as { pod: V1Pod }).pod;
    expect(pod.metadata?.name).toBe("tune-train-1");
    const container = pod.spec!.containers[0]!;
    expect(container.image).toBe("ghcr.io/kubetune/kubetune-trainer-gpu:test");
    expect(container.resources?.limits).toEqual({ "nvidia.com/gpu": "1", memory: "16Gi" });
    expect(container.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ["ALL"] } });
    expect(pod.spec?.securityContext?.seccompProfile?.type).toBe("RuntimeDefault");
    expect(pod.spec?.restartPolicy).toBe("Never");
    const secretEnv = container.env!.filter((variable) => variable.name.startsWith("AWS_"));
    expect(secretEnv.every((variable) => variable.value === undefined && variable.valueFrom?.secretKeyRef?.name === "s3-creds")).toBe(true);
    expect(decision.status).toMatchObject({ phase: "Running", attempts: 1, startTime: now.toISOString() });
  });

  it("reports a running attempt as Running/Training and creates nothing", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1 } });
    const decision = decide(j, [podOf(j, 1, "Running")], now, settings);
    expect(decision.actions.map((action) => action.kind)).toEqual([]);
    expect(decision.status?.conditions?.find((c) => c.type === "Running")).toMatchObject({ status: "True", reason: "Training" });
  });

  it("retries a failed attempt after its backoff, counting the failure on the new pod", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1 } });
    const pods = [failed(j, 1, { reason: "Error", message: "CUDA error" })];
    const waiting = decide(j, pods, seconds(5), settings);
    expect(waiting.actions.some((action) => action.kind === "createPod")).toBe(false);
    expect(waiting.requeueAfterSeconds).toBe(5);
    const retry = decide(j, pods, seconds(11), settings);
    const pod = (retry.actions.find((action) => action.kind === "createPod") as { pod: V1Pod }).pod;
    expect(pod.metadata?.name).toBe("tune-train-2");
    expect(pod.metadata?.annotations?.["kubetune.io/failures-before"]).toBe("1");
    expect(retry.status).toMatchObject({ attempts: 2, failedAttempts: 1 });
    expect(retry.events.map((event) => event.reason)).toContain("Retrying");
  });

  it("fails with BackoffLimitExceeded once failures pass runPolicy.backoffLimit", () => {
    const j = job({ spec: { runPolicy: { backoffLimit: 1 } }, status: { conditions: [preflightPassed], attempts: 2 } });
    const pods = [failed(j, 1, { reason: "Error" }), failed(j, 2, { reason: "OOMKilled", exitCode: 137 }, 1)];
    const decision = decide(j, pods, seconds(600), settings);
    expect(decision.status?.phase).toBe("Failed");
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")).toMatchObject({ reason: "BackoffLimitExceeded" });
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")?.message).toContain("OOMKilled");
  });

  it("treats a trainer's InvalidDataset as permanent", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1 } });
    const decision = decide(j, [failed(j, 1, { message: "step 40\nInvalidDataset: s3://data/train.jsonl:812: invalid JSON" })], now, settings);
    expect(decision.status?.phase).toBe("Failed");
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")).toMatchObject({ reason: "InvalidDataset", message: "s3://data/train.jsonl:812: invalid JSON" });
  });

  it("does not count an evicted pod against the backoff limit", () => {
    const j = job({ spec: { runPolicy: { backoffLimit: 0 } }, status: { conditions: [preflightPassed], attempts: 1 } });
    const evicted = podOf(j, 1, "Failed", { reason: "Evicted", message: "The node was low on resource: memory." });
    // After the interruption's backoff (it saved no checkpoint), counted from the pod's creation for want of an end time.
    const decision = decide(j, [evicted], seconds(11), settings);
    expect(decision.status).toMatchObject({ phase: "Running", attempts: 2, failedAttempts: 0 });
  });

  it("does not count a trainer stopped by SIGTERM with a checkpoint (exit 75) as a failure", () => {
    const before = job({ spec: { runPolicy: { backoffLimit: 0 } }, status: { conditions: [preflightPassed], attempts: 1 } });
    // The attempt saved a checkpoint at step 30 before it stopped: it made progress, so it is retried at once.
    const j = { ...before, status: { ...before.status, lastCheckpoint: { step: 30, uri: "s3://out/tune/checkpoints/step-30", time: now.toISOString() } } };
    const decision = decide(j, [failed(before, 1, { reason: "Error", exitCode: 75 })], now, settings);
    expect(decision.status).toMatchObject({ phase: "Running", attempts: 2, failedAttempts: 0 });
  });

  describe("interruptions (evictions, exit 75): not failures, but backed off and bounded", () => {
    const checkpointAt = (step: number) => ({ step, uri: `s3://out/tune/checkpoints/step-${step}`, time: now.toISOString() });
    /** Attempt 1's pod, created when the job's newest checkpoint was at resumeStep, after `before` interruptions in a row. */
    function interrupted(j: FineTuneJob, before: number, resumeStep: number, how: "evicted" | "stopped", endedAt = now): V1Pod {
      const pod =
        how === "stopped"
          ? failed(j, 1, { reason: "Error", exitCode: 75 }, 0, endedAt)
          : podOf(j, 1, "Failed", { reason: "Evicted", message: "The node was low on resource: memory.", conditions: [{ type: "DisruptionTarget", status: "True", lastTransitionTime: endedAt.toISOString() as never }] });
      pod.metadata!.annotations = { ...pod.metadata!.annotations, "kubetune.io/interruptions-before": String(before), "kubetune.io/resume-step": String(resumeStep) };
      return pod;
    }
    const createdPod = (decision: ReturnType<typeof decide>) => (decision.actions.find((action) => action.kind === "createPod") as { pod: V1Pod } | undefined)?.pod;

    it("retries at once after an attempt that saved a checkpoint, and starts the streak again", () => {
      const j = job({ status: { conditions: [preflightPassed], attempts: 1, lastCheckpoint: checkpointAt(20) } });
      const decision = decide(j, [interrupted(j, 4, 10, "evicted")], now, settings);
      expect(createdPod(decision)?.metadata?.annotations).toMatchObject({ "kubetune.io/interruptions-before": "0", "kubetune.io/resume-step": "20" });
    });

    it("backs off exponentially while interruptions in a row save nothing, counting from when the pod ended", () => {
      const j = job({ status: { conditions: [preflightPassed], attempts: 1, lastCheckpoint: checkpointAt(10) } });
      // The third interruption in a row without a new checkpoint: 10 s * 2^2.
      for (const how of ["evicted", "stopped"] as const) {
        const pod = interrupted(j, 2, 10, how);
        const waiting = decide(j, [pod], seconds(39), settings);
        expect(createdPod(waiting)).toBeUndefined();
        expect(waiting.requeueAfterSeconds).toBe(1);
        expect(waiting.status?.conditions?.find((c) => c.type === "Running")).toMatchObject({ reason: "Retrying", message: expect.stringContaining("3 time(s) in a row without a new checkpoint") });
        const retried = decide(j, [pod], seconds(41), settings);
        expect(createdPod(retried)?.metadata?.annotations).toMatchObject({ "kubetune.io/interruptions-before": "3" });
        expect(retried.status).toMatchObject({ attempts: 2, failedAttempts: 0 });
      }
      // The backoff is capped at retryBackoffMaxSeconds (300 s), however long the streak.
      expect(createdPod(decide(j, [interrupted(j, 8, 10, "evicted")], seconds(301), settings))).toBeDefined();
      expect(createdPod(decide(j, [interrupted(j, 8, 10, "evicted")], seconds(299), settings))).toBeUndefined();
    });

    it("fails with InterruptedWithoutProgress once the streak passes the limit", () => {
      const j = job({ status: { conditions: [preflightPassed], attempts: 1, lastCheckpoint: checkpointAt(10) } });
      expect(decide(j, [interrupted(j, 10, 10, "evicted")], seconds(3600), settings).status?.conditions?.find((c) => c.type === "Failed")).toMatchObject({
        reason: "InterruptedWithoutProgress",
        message: expect.stringContaining("interrupted 11 times in a row without saving a new checkpoint (more than the operator's limit of 10)"),
      });
      expect(decide(j, [interrupted(j, 9, 10, "evicted")], seconds(3600), settings).status?.phase).toBe("Running");
      const strict = { ...settings, interruptionLimit: 2 };
      expect(decide(j, [interrupted(j, 2, 10, "stopped")], seconds(3600), strict).status).toMatchObject({ phase: "Failed" });
    });
  });

  it("retries when the attempt's pod vanished", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    const decision = decide(j, [], now, settings);
    expect((decision.actions.find((action) => action.kind === "createPod") as { pod: V1Pod }).pod.metadata?.name).toBe("tune-train-2");
  });

  it("fails a pod stuck in ImagePullBackOff after the timeout, and not before", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1 } });
    const pod = podOf(j, 1, "Pending", { containerStatuses: [{ state: { waiting: { reason: "ImagePullBackOff", message: 'Back-off pulling image "x"' } } } as never] });
    expect(decide(j, [pod], seconds(30), settings).status?.phase).toBe("Running");
    const decision = decide(j, [pod], seconds(61), settings);
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")?.reason).toBe("ImagePullFailed");
    expect(decision.actions).toContainEqual({ kind: "deletePod", name: "tune-train-1" });
  });

  it("fails an unschedulable pod after the timeout", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1 } });
    const pod = podOf(j, 1, "Pending", { conditions: [{ type: "PodScheduled", status: "False", reason: "Unschedulable", message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.", lastTransitionTime: now.toISOString() as never }] });
    const decision = decide(j, [pod], seconds(121), settings);
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")).toMatchObject({ reason: "Unschedulable" });
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")?.message).toContain("Insufficient nvidia.com/gpu");
  });

  it("suspends by stopping the pod, and resumes with a new attempt that is not a failure", () => {
    const running = job({ spec: { runPolicy: { suspend: true } }, status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    const suspending = decide(running, [podOf(running, 1, "Running")], now, settings);
    expect(suspending.actions).toContainEqual({ kind: "deletePod", name: "tune-train-1" });
    expect(suspending.status?.phase).toBe("Suspended");
    const resumed = job({ status: { ...suspending.status, phase: "Suspended" } });
    const decision = decide(resumed, [], seconds(30), settings);
    expect(decision.status).toMatchObject({ phase: "Running", attempts: 2, failedAttempts: 0 });
    expect(decision.events.map((event) => event.reason)).toContain("Resumed");
  });

  it("marks success, and deletes the job once ttlSecondsAfterFinished has passed", () => {
    const j = job({ spec: { runPolicy: { ttlSecondsAfterFinished: 60 } }, status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    const done = decide(j, [podOf(j, 1, "Succeeded")], now, settings);
    expect(done.status?.phase).toBe("Succeeded");
    expect(done.requeueAfterSeconds).toBe(60);
    const later = decide(job({ spec: { runPolicy: { ttlSecondsAfterFinished: 60 } }, status: done.status }), [podOf(j, 1, "Succeeded")], seconds(61), settings);
    expect(later.actions).toContainEqual({ kind: "deleteJob" });
  });

  it("fails with DeadlineExceeded after activeDeadlineSeconds", () => {
    const j = job({ spec: { runPolicy: { activeDeadlineSeconds: 100 } }, status: { conditions: [preflightPassed], attempts: 1, startTime: now.toISOString() } });
    const decision = decide(j, [podOf(j, 1, "Running")], seconds(101), settings);
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")?.reason).toBe("DeadlineExceeded");
    expect(decision.actions).toContainEqual({ kind: "deletePod", name: "tune-train-1" });
  });

  it("counts activeDeadlineSeconds from when the job became active, preflight included, for a pod that never starts", () => {
    const j = job({ spec: { runPolicy: { activeDeadlineSeconds: 100 } } });
    const started = decide(j, [], now, settings);
    expect(started.status?.startTime).toBe(now.toISOString());
    const stuck = preflightPod(j, applyDefaults(j.spec), settings);
    stuck.metadata!.creationTimestamp = now.toISOString() as never;
    stuck.status = { phase: "Pending", containerStatuses: [{ state: { waiting: { reason: "ContainerCreating" } } } as never] };
    const later = job({ spec: { runPolicy: { activeDeadlineSeconds: 100 } }, status: started.status });
    expect(decide(later, [stuck], seconds(101), { ...settings, imagePullTimeoutSeconds: 1000 }).status?.conditions?.find((c) => c.type === "Failed")?.reason).toBe("DeadlineExceeded");
  });

  it("does not count suspended time against activeDeadlineSeconds: a resume starts the clock again", () => {
    const suspendedLong = job({ spec: { runPolicy: { activeDeadlineSeconds: 100 } }, status: { conditions: [preflightPassed], phase: "Suspended", attempts: 1, startTime: now.toISOString() } });
    const resumed = decide(suspendedLong, [], seconds(1000), settings);
    expect(resumed.status?.phase).toBe("Running");
    expect(resumed.status?.startTime).toBe(seconds(1000).toISOString());
    expect(resumed.actions.some((action) => action.kind === "createPod")).toBe(true);
  });

  it("comes back when activeDeadlineSeconds runs out, though nothing about the job changes by then (a trainer that stopped reporting)", () => {
    // As the Job controller requeues a Job for the moment its deadline passes.
    const j = job({ spec: { runPolicy: { activeDeadlineSeconds: 100 } }, status: { conditions: [preflightPassed], attempts: 1, phase: "Running", startTime: now.toISOString() } });
    const training = decide(j, [podOf(j, 1, "Running")], seconds(40), settings);
    expect(training.requeueAfterSeconds).toBe(61);
    expect(decide(j, [podOf(j, 1, "Running")], seconds(40 + 61), settings).status?.conditions?.find((c) => c.type === "Failed")?.reason).toBe("DeadlineExceeded");
    // A sooner check (a pod still starting) keeps its own time; no clock runs while the job waits in its queue.
    expect(decide(j, [podOf(j, 1, "Pending")], seconds(40), settings).requeueAfterSeconds).toBe(15);
    const queued = job({ spec: { queueName: "gpus", runPolicy: { activeDeadlineSeconds: 100 } }, status: { conditions: [preflightPassed], attempts: 1, phase: "Queued", startTime: now.toISOString() } });
    expect(decide(queued, [], seconds(40), settings).requeueAfterSeconds).toBeUndefined();
    // A year's deadline comes back within a day, to look again: a timer that long would overflow and fire at once.
    const yearLong = job({ spec: { runPolicy: { activeDeadlineSeconds: 31_536_000 } }, status: { conditions: [preflightPassed], attempts: 1, phase: "Running", startTime: now.toISOString() } });
    expect(decide(yearLong, [podOf(yearLong, 1, "Running")], seconds(40), settings).requeueAfterSeconds).toBe(86_400);
  });

  it("fails a pod stuck in CreateContainerConfigError after the timeout, naming the missing Secret", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running", startTime: now.toISOString() } });
    const waiting = { state: { waiting: { reason: "CreateContainerConfigError", message: 'secret "s3-creds" not found' } } } as never;
    const pod = podOf(j, 1, "Pending", { containerStatuses: [waiting] });
    expect(decide(j, [pod], seconds(30), settings).status?.phase).toBe("Running");
    const failedCondition = decide(j, [pod], seconds(61), settings).status?.conditions?.find((c) => c.type === "Failed");
    expect(failedCondition).toMatchObject({ reason: "ContainerConfigError", message: expect.stringContaining('secret "s3-creds" not found') });
  });

  it("starts each new attempt with its pod alone: no Secret to write, the progress token is projected into the pod", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running", startTime: now.toISOString() } });
    const next = decide(j, [failed(j, 1, { exitCode: 1 }, 0, seconds(-1000))], now, settings);
    expect(next.actions.map((action) => action.kind)).toEqual(["createPod"]);
    const pod = (next.actions[0] as { pod: V1Pod }).pod;
    expect(pod.spec?.volumes?.find((volume) => volume.name === "progress-token")?.projected?.sources).toEqual([
      { serviceAccountToken: { audience: "kubetune-progress", expirationSeconds: 3600, path: "token" } },
    ]);
  });

  it("keeps the failure count in status: deleting the pods does not reset backoffLimit", () => {
    const j = job({ spec: { runPolicy: { backoffLimit: 5 } }, status: { conditions: [preflightPassed], attempts: 3, failedAttempts: 2, phase: "Running" } });
    // Someone deleted every pod: the next attempt still knows of the two failures.
    const decision = decide(j, [], now, settings);
    expect(decision.status).toMatchObject({ attempts: 4, failedAttempts: 2 });
    const pod = (decision.actions.find((action) => action.kind === "createPod") as { pod: V1Pod }).pod;
    expect(pod.metadata?.annotations?.["kubetune.io/failures-before"]).toBe("2");
  });

  it("counts a failed attempt once while it waits for its backoff, however often it reconciles", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    const first = decide(j, [failed(j, 1, { exitCode: 1 })], now, settings);
    expect(first.status?.failedAttempts).toBe(1);
    const again = decide(job({ status: first.status }), [failed(j, 1, { exitCode: 1 })], seconds(1), settings);
    expect(again.status?.failedAttempts).toBe(1);
  });

  it("sets PreflightChecked to False with the preflight's failure reason", () => {
    const j = job();
    const pod = preflightPod(j, applyDefaults(j.spec), settings);
    pod.status = { phase: "Failed", containerStatuses: [{ state: { terminated: { exitCode: 1, message: "ModelNotFound: s3://models/smollm holds no config.json" } } } as never] };
    const decision = decide(job({ status: { conditions: [{ type: "PreflightChecked", status: "False", reason: "PreflightRunning", message: "", lastTransitionTime: now.toISOString() }] } }), [pod], now, settings);
    expect(decision.status?.conditions?.find((c) => c.type === "PreflightChecked")).toMatchObject({ status: "False", reason: "ModelNotFound", message: expect.stringContaining("config.json") });
  });

  it("fails with NameConflict naming an object the job does not own, and deletes nothing when the job goes", () => {
    const j = job({ status: { phase: "Pending" } });
    const decision = decideNameConflict(j, { kind: "Pod", name: "tune-preflight" }, now);
    expect(decision.status?.phase).toBe("Failed");
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")).toMatchObject({ reason: "NameConflict", message: expect.stringContaining("Pod team-a/tune-preflight already exists") });
    expect(decision.events).toEqual([expect.objectContaining({ type: "Warning", reason: "NameConflict" })]);
    const deleting = job({ deleting: true, status: decision.status });
    expect(decide(deleting, [], now, settings).actions).toEqual([]);
  });

  it("waits, without failing, for the pod of an earlier job of the same name to go, and says so once", () => {
    const j = job({ status: { phase: "Pending" } });
    const owner = "FineTuneJob tune (uid uid-0)";
    const decision = decideEarlierJobPod(j, { kind: "Pod", name: "tune-preflight", owner }, now);
    expect(decision.status?.phase).toBe("Pending");
    expect(decision.status?.conditions?.find((c) => c.type === "Failed")).toBeUndefined();
    expect(decision.status?.conditions?.find((c) => c.type === "Running")).toMatchObject({ status: "False", reason: "EarlierJobPodTerminating", message: expect.stringContaining(owner) });
    expect(decision.events).toEqual([expect.objectContaining({ type: "Normal", reason: "EarlierJobPodTerminating" })]);
    expect(decision.requeueAfterSeconds).toBeGreaterThan(0);
    // Still waiting at the next reconcile: no second Event.
    expect(decideEarlierJobPod(job({ status: decision.status }), { kind: "Pod", name: "tune-preflight", owner }, now).events).toEqual([]);
  });

  it("takes the finalizer of an earlier operator version off a job, after its pods when the job is being deleted", () => {
    const legacy = job({ finalizers: [FINALIZER, "example.com/other"], status: { conditions: [preflightPassed], attempts: 1 } });
    expect(decide(legacy, [podOf(legacy, 1, "Running")], now, settings).actions).toEqual([{ kind: "removeFinalizer" }]);
    const deleting = job({ deleting: true, finalizers: [FINALIZER], status: { attempts: 1 } });
    expect(decide(deleting, [podOf(deleting, 1, "Running")], now, settings).actions).toEqual([{ kind: "deletePod", name: "tune-train-1" }]);
    expect(decide(deleting, [], now, settings).actions).toEqual([{ kind: "removeFinalizer" }]);
  });

  describe("with a queue (operator/queue decides admission on the Admitted condition)", () => {
    const admitted = (status: "True" | "False", reason: string, message = "") => ({ type: "Admitted", status, reason, message, lastTransitionTime: now.toISOString() }) as const;
    const queued = (conditions: NonNullable<FineTuneJob["status"]>["conditions"], rest: Partial<NonNullable<FineTuneJob["status"]>> = {}) =>
      job({ spec: { queueName: "gpus" }, status: { conditions, ...rest } });

    it("creates no pod, not even the preflight, until the queue admits the job", () => {
      for (const conditions of [[], [admitted("False", "Queued", "waiting for 1 GPU; 2 of 2 GPUs in use by a/x, b/y")]]) {
        const decision = decide(queued(conditions), [], now, settings);
        expect(decision.status?.phase).toBe("Queued");
        expect(decision.status?.startTime).toBeUndefined();
        expect(decision.actions.some((action) => action.kind === "createPod")).toBe(false);
        expect(decision.status?.conditions?.find((c) => c.type === "Ready")?.message).toMatch(/waiting for/);
      }
      const go = decide(queued([admitted("True", "Admitted"), preflightPassed]), [], now, settings);
      expect(go.actions.map((action) => action.kind)).toEqual(["createPod"]);
      expect(go.status?.phase).toBe("Running");
    });

    it("fails a job its queue can never admit", () => {
      const decision = decide(queued([admitted("False", "ExceedsQueueQuota", "the job asks for 3 GPUs but the queue's whole quota is 2 GPUs")]), [], now, settings);
      expect(decision.status?.phase).toBe("Failed");
      expect(decision.status?.conditions?.find((c) => c.type === "Failed")).toMatchObject({ reason: "ExceedsQueueQuota", message: expect.stringContaining("3 GPUs") });
    });

    it("stops a preempted trainer, shows Queued once it is gone, and resumes it as an interruption, not a failure", () => {
      const running = [admitted("False", "Preempted", "preempted by a/urgent"), preflightPassed, { type: "Running", status: "True", reason: "Training", message: "", lastTransitionTime: now.toISOString() } as const];
      const j = queued(running, { phase: "Running", attempts: 1, failedAttempts: 0, startTime: now.toISOString(), lastCheckpoint: { step: 3, uri: "s3://out/tune/checkpoints/step-3", time: now.toISOString() } });
      const stopping = decide(j, [podOf(j, 1, "Running")], now, settings);
      expect(stopping.actions).toEqual([{ kind: "deletePod", name: "tune-train-1" }]);
      // The queue keeps the GPU counted until the phase says the pod is gone.
      expect(stopping.status?.phase).toBe("Running");
      expect(stopping.status?.conditions?.find((c) => c.type === "Running")).toMatchObject({ status: "False", reason: "Preempted" });
      const gone = decide(j, [], seconds(5), settings);
      expect(gone.status?.phase).toBe("Queued");
      expect(gone.actions).toEqual([]);
      // Admitted again: attempt 2 resumes from the checkpoint, and nothing counts as failed.
      const again = queued([admitted("True", "Admitted"), preflightPassed], { ...gone.status, conditions: [admitted("True", "Admitted"), preflightPassed] });
      const resumed = decide(again, [], seconds(6), settings);
      expect(resumed.actions.map((action) => action.kind)).toEqual(["createPod"]);
      expect(resumed.status).toMatchObject({ attempts: 2, failedAttempts: 0 });
    });

    it("does not count time a preempted job spends stopping or queued against activeDeadlineSeconds: its next admission starts the clock again", () => {
      // The Job controller's rule, which Kueue's suspend/resume relies on: no deadline while suspended, startTime reset on resume.
      const deadline = { activeDeadlineSeconds: 100 };
      const checkpoint = { step: 3, uri: "s3://out/tune/checkpoints/step-3", time: now.toISOString() };
      const withDeadline = (conditions: NonNullable<FineTuneJob["status"]>["conditions"], rest: Partial<NonNullable<FineTuneJob["status"]>>) =>
        job({ spec: { queueName: "gpus", runPolicy: deadline }, status: { conditions, ...rest } });
      const preempted = [admitted("False", "Preempted", "preempted by a/urgent"), preflightPassed, { type: "Running", status: "True", reason: "Training", message: "", lastTransitionTime: now.toISOString() } as const];
      const j = withDeadline(preempted, { phase: "Running", attempts: 1, failedAttempts: 0, startTime: now.toISOString(), lastCheckpoint: checkpoint });
      // Preempted at 90 s; the trainer is still saving its checkpoint when the 100 s pass: it stops, it does not fail.
      const stopping = decide(j, [podOf(j, 1, "Running")], seconds(101), settings);
      expect(stopping.status?.phase).toBe("Running");
      expect(stopping.actions).toEqual([{ kind: "deletePod", name: "tune-train-1" }]);
      // Then it waits in the queue for 15 minutes, far past its deadline.
      const waiting = decide(j, [], seconds(1000), settings);
      expect(waiting.status?.phase).toBe("Queued");
      expect(waiting.status?.conditions?.find((c) => c.type === "Failed")).toBeUndefined();
      // Admitted again: the resumed attempt starts with a whole deadline of its own.
      const readmitted = [admitted("True", "Admitted"), preflightPassed];
      const resumed = decide(withDeadline(readmitted, { ...waiting.status, conditions: readmitted }), [], seconds(1000), settings);
      expect(resumed.actions.map((action) => action.kind)).toEqual(["createPod"]);
      expect(resumed.status).toMatchObject({ phase: "Running", attempts: 2, failedAttempts: 0, startTime: seconds(1000).toISOString() });
      const training = withDeadline(resumed.status!.conditions!, resumed.status!);
      expect(decide(training, [podOf(training, 2, "Running")], seconds(1099), settings).status?.phase).toBe("Running");
      // The deadline still holds for the time it runs.
      const late = decide(training, [podOf(training, 2, "Running")], seconds(1101), settings);
      expect(late.status?.conditions?.find((c) => c.type === "Failed")?.reason).toBe("DeadlineExceeded");
    });

    it("resumes a suspended job into its queue, no longer marked Suspended", () => {
      const suspended = { type: "Suspended", status: "True", reason: "Suspended", message: "", lastTransitionTime: now.toISOString() } as const;
      const decision = decide(queued([admitted("False", "Suspended", "gave its quota back"), suspended], { phase: "Suspended", attempts: 1 }), [], now, settings);
      expect(decision.status?.phase).toBe("Queued");
      expect(decision.status?.conditions?.find((c) => c.type === "Suspended")).toMatchObject({ status: "False", reason: "Resumed" });
    });
  });

  it("refuses an invalid spec with InvalidSpec naming each field, even if the API server let it in", () => {
    const decision = decide(job({ spec: { method: { type: "lora", lora: { r: 0 } }, dataset: { train: "data/local.jsonl" } } }), [], now, settings);
    const failedCondition = decision.status?.conditions?.find((c) => c.type === "Failed");
    expect(failedCondition?.reason).toBe("InvalidSpec");
    expect(failedCondition?.message).toContain("spec.method.lora.r");
    expect(failedCondition?.message).toContain("spec.dataset.train");
  });

  it("while the job is being deleted (another finalizer, or foreground deletion, holds it) starts nothing and stops every pod", () => {
    const j = job({ deleting: true, status: { attempts: 1 } });
    expect(decide(j, [podOf(j, 1, "Running")], now, settings).actions).toEqual([{ kind: "deletePod", name: "tune-train-1" }]);
    expect(decide(j, [], now, settings).actions).toEqual([]);
  });

  it("is idempotent: the same world gives the same decision", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1 } });
    const pods = [failed(j, 1, { reason: "Error" })];
    expect(decide(j, pods, seconds(20), settings)).toEqual(decide(j, pods, seconds(20), settings));
  });
});

describe("the summary conditions kstatus reads (Ready, Reconciling, Stalled)", () => {
  const summary = (status: FineTuneJob["status"]) =>
    Object.fromEntries(
      (status?.conditions ?? []).filter((c) => ["Ready", "Reconciling", "Stalled"].includes(c.type)).map((c) => [c.type, `${c.status} ${c.reason}`]),
    );

  it("while pending and running: Reconciling, not Ready, with the reason of the step under way", () => {
    expect(summary(decide(job(), [], now, settings).status)).toEqual({ Ready: "False PreflightRunning", Reconciling: "True PreflightRunning", Stalled: "False PreflightRunning" });
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    expect(summary(decide(j, [podOf(j, 1, "Running")], now, settings).status)).toEqual({ Ready: "False Training", Reconciling: "True Training", Stalled: "False Training" });
  });

  it("once succeeded: Ready, and the columns read 100% with no time left", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running", progress: { step: 199, totalSteps: 200, percent: 99.5, percentText: "99%", eta: "2s", etaSeconds: 2 } } });
    const status = decide(j, [podOf(j, 1, "Succeeded")], now, settings).status;
    expect(summary(status)).toEqual({ Ready: "True Completed", Reconciling: "False Completed", Stalled: "False Completed" });
    expect(status?.progress).toMatchObject({ percent: 100, percentText: "100%", eta: "0s" });
  });

  it("once failed: Stalled, with the failure's reason", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    const status = decide(j, [failed(j, 1, { reason: "OOMKilled" }, 3)], now, settings).status;
    expect(summary(status)).toEqual({ Ready: "False BackoffLimitExceeded", Reconciling: "False BackoffLimitExceeded", Stalled: "True BackoffLimitExceeded" });
  });

  it("while suspended: neither Ready nor Reconciling nor Stalled", () => {
    const j = job({ spec: { runPolicy: { suspend: true } }, status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    expect(summary(decide(j, [podOf(j, 1, "Running")], now, settings).status)).toEqual({ Ready: "False Suspended", Reconciling: "False Suspended", Stalled: "False Suspended" });
  });

  it("keeps lastTransitionTime while a summary's status stays the same, and records the generation", () => {
    const j = job({ status: { conditions: [preflightPassed], attempts: 1, phase: "Running" } });
    const first = decide(j, [podOf(j, 1, "Running")], now, settings).status!;
    const again = decide({ ...j, status: first }, [podOf(j, 1, "Running")], seconds(60), settings).status!;
    const ready = again.conditions?.find((c) => c.type === "Ready");
    expect(ready).toMatchObject({ lastTransitionTime: now.toISOString(), observedGeneration: 1 });
  });
});
