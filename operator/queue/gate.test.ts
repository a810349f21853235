import { describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { queueGate } from "./gate.ts";

const job = (queueName: string | undefined, admitted?: { status: "True" | "False"; reason: string; message: string }): FineTuneJob =>
  ({
    apiVersion: "kubetune.io/v1alpha1",
    kind: "FineTuneJob",
    metadata: { name: "j", namespace: "n" },
    spec: { queueName },
    status: admitted ? { conditions: [{ type: "Admitted", lastTransitionTime: "2026-01-01T00:00:00Z", ...admitted }] } : {},
  }) as unknown as FineTuneJob;

describe("queueGate", () => {
  it("lets jobs without a queue, and admitted ones, run", () => {
    expect(queueGate(job(undefined))).toEqual({ kind: "run" });
    expect(queueGate(job("q", { status: "True", reason: "Admitted", message: "admitted" }))).toEqual({ kind: "run" });
  });

  it("holds a job its queue has not seen yet, or keeps waiting", () => {
    expect(queueGate(job("q"))).toEqual({ kind: "wait", reason: "Queued", message: "waiting for queue q to admit the job", preempted: false });
    expect(queueGate(job("q", { status: "False", reason: "Queued", message: "waiting for 1 GPU" }))).toMatchObject({ kind: "wait", message: "waiting for 1 GPU", preempted: false });
  });

  it("stops a preempted job and fails one that can never fit", () => {
    expect(queueGate(job("q", { status: "False", reason: "Preempted", message: "preempted by n/x" }))).toEqual({ kind: "wait", reason: "Preempted", message: "preempted by n/x", preempted: true });
    expect(queueGate(job("q", { status: "False", reason: "ExceedsQueueQuota", message: "asks for 3 GPUs" }))).toEqual({ kind: "fail", reason: "ExceedsQueueQuota", message: "asks for 3 GPUs" });
  });
});
