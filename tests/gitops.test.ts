import type { V1Pod } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { applyDefaults, type FineTuneJob } from "../api/index.ts";
import { decide, type DecideSettings } from "../operator/finetunejob/decide.ts";
import { trainerPod } from "../operator/finetunejob/pods.ts";
import { argoHealth, argoHealthScript, luaLiteral } from "./argocd-health.ts";

// The statuses below are the operator's own: decide() applied to a job and its pods in each
// phase, as the controller writes them.

const settings: DecideSettings = {
  defaultImage: "kubetune:test",
  progressUrl: "https://operator:8443",
  terminationGraceSeconds: 60,
  preflight: true,
  imagePullTimeoutSeconds: 60,
  unschedulableTimeoutSeconds: 60,
  retryBackoffBaseSeconds: 10,
  retryBackoffMaxSeconds: 300,
};
const now = new Date("2026-11-28T12:00:00Z");
const preflightPassed = { type: "PreflightChecked", status: "True", reason: "PreflightPassed", message: "the model, tokenizer and dataset exist and parse", lastTransitionTime: now.toISOString() } as const;

function job(spec: Record<string, unknown> = {}, status?: FineTuneJob["status"]): FineTuneJob {
  return {
    apiVersion: "kubetune.io/v1alpha1",
    kind: "FineTuneJob",
    metadata: { name: "tune", namespace: "team-a", uid: "uid-1", generation: 1 },
    spec: { baseModel: { uri: "s3://models/base" }, dataset: { train: "s3://data/train.jsonl" }, method: { type: "lora" }, output: { uri: "s3://out/tune" }, ...spec },
    status,
  } as FineTuneJob;
}

function pod(j: FineTuneJob, phase: string, terminated?: object, failuresBefore = 0): V1Pod {
  const p = trainerPod(j, applyDefaults(j.spec), 1, failuresBefore, settings);
  p.metadata!.creationTimestamp = now.toISOString() as never;
  p.status = { phase, ...(terminated ? { containerStatuses: [{ state: { terminated: { exitCode: 1, finishedAt: now.toISOString(), ...terminated } } } as never] } : {}) };
  return p;
}

/** The job as the operator leaves it after deciding on it once. */
function decided(j: FineTuneJob, pods: V1Pod[]): FineTuneJob {
  return { ...j, status: decide(j, pods, now, settings).status };
}

const running = { conditions: [preflightPassed], attempts: 1, phase: "Running" as const };
const progress = { step: 50, totalSteps: 200, percent: 25, percentText: "25%", loss: 0.42254677414894104, lossText: "0.4225", etaSeconds: 73, eta: "1m13s", updatedAt: now.toISOString() };

const phases: [string, FineTuneJob][] = [
  ["Pending (preflight)", decided(job(), [])],
  ["Running", (() => {
    const j = decided(job({}, running), [pod(job({}, running), "Running")]);
    return { ...j, status: { ...j.status, progress } };
  })()],
  ["Running (pod starting)", decided(job({}, running), [pod(job({}, running), "Pending")])],
  ["Succeeded", (() => {
    const j = job({}, { ...running, progress, outputs: { uri: "s3://out/tune", files: [], loadableBy: ["PEFT"] } });
    return decided(j, [pod(j, "Succeeded")]);
  })()],
  ["Failed", decided(job({}, running), [pod(job({}, running), "Failed", { reason: "OOMKilled" }, 3)])],
  ["Suspended", decided(job({ runPolicy: { suspend: true } }, running), [pod(job({}, running), "Running")])],
];

describe("the Argo CD health check in docs/gitops.md, in a Lua VM", () => {
  it("is valid Lua that Argo CD can load", () => {
    expect(() => argoHealth({ metadata: {} })).not.toThrow();
    expect(() => argoHealth({ metadata: {} }, "return {")).toThrow(/the health check failed in Lua/);
  });

  it("maps each phase the operator writes to Argo CD's health", () => {
    expect(Object.fromEntries(phases.map(([label, object]) => [label, argoHealth(object)]))).toEqual({
      "Pending (preflight)": { status: "Progressing", message: "Pending: PreflightRunning: checking that the model, tokenizer and dataset exist and parse" },
      Running: { status: "Progressing", message: "Running: step 50/200, loss 0.4225, ETA 1m13s" },
      "Running (pod starting)": { status: "Progressing", message: "Running: PodCreated: attempt 1 is starting" },
      Succeeded: { status: "Healthy", message: "Succeeded; outputs in s3://out/tune" },
      Failed: {
        status: "Degraded",
        message: "BackoffLimitExceeded: 4 attempts failed, more than runPolicy.backoffLimit (3) allows; the last: OOMKilled: the trainer exceeded its memory limit: raise resources.memory or lower batchSize or maxSeqLength",
      },
      Suspended: { status: "Suspended", message: "Suspended: the trainer is saving a checkpoint and stopping" },
    });
  });

  it("waits for the operator: no status yet, or a spec change not yet observed; a queued job is progressing", () => {
    expect(argoHealth(job())).toEqual({ status: "Progressing", message: "Waiting for the kubetune operator to pick up the job" });
    const changed = phases[1]![1];
    expect(argoHealth({ ...changed, metadata: { ...changed.metadata, generation: 2 } })).toEqual({ status: "Progressing", message: "Waiting for the kubetune operator to act on generation 2" });
    expect(argoHealth(job({}, { phase: "Queued" }))).toEqual({ status: "Progressing", message: "Queued: waiting" });
  });

  it("passes strings with quotes, backslashes and non-ASCII text to Lua unchanged", () => {
    const text = 'reason "quoted" \\ path → ü\nnext line';
    expect(argoHealth({ metadata: {}, status: { phase: "Failed", conditions: [{ type: "Failed", reason: "InvalidDataset", message: text }] } })).toEqual({ status: "Degraded", message: `InvalidDataset: ${text}` });
    expect(luaLiteral([1, 0.5, true, null])).toBe("{1, 0.5, true, nil}");
  });

  it("is the only Lua block of the page", () => {
    expect(argoHealthScript()).toContain("local hs = {}");
  });
});

/**
 * kstatus' generic rules (sigs.k8s.io/cli-utils/pkg/kstatus/status, Compute for a kind without
 * specific rules): deletion, then observedGeneration, then Reconciling / Stalled, then Ready,
 * else Current.
 */
function kstatus(object: FineTuneJob): string {
  if (object.metadata.deletionTimestamp) return "Terminating";
  const status = object.status ?? {};
  if (status.observedGeneration !== undefined && status.observedGeneration !== object.metadata.generation) return "InProgress";
  const conditions = status.conditions ?? [];
  if (conditions.some((c) => c.type === "Reconciling" && c.status === "True")) return "InProgress";
  if (conditions.some((c) => c.type === "Stalled" && c.status === "True")) return "Failed";
  const ready = conditions.find((c) => c.type === "Ready");
  if (ready) return ready.status === "True" ? "Current" : "InProgress";
  return "Current";
}

describe("what Flux's kstatus makes of the conditions", () => {
  it("is InProgress until the job succeeds (Current) or fails (Failed)", () => {
    expect(Object.fromEntries(phases.map(([label, object]) => [label, kstatus(object)]))).toEqual({
      "Pending (preflight)": "InProgress",
      Running: "InProgress",
      "Running (pod starting)": "InProgress",
      Succeeded: "Current",
      Failed: "Failed",
      Suspended: "InProgress",
    });
  });
});
