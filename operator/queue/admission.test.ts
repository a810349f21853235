import { describe, expect, it } from "vitest";
import { decideAdmission, type JobState, type QueueJob, type QueueQuota } from "./admission.ts";

const quota = (gpus: number, extra: Partial<QueueQuota> = {}): QueueQuota => ({ name: "gpus", gpus, preemption: "LowerPriority", ...extra });
const job = (key: string, createdAt: number, options: { gpus?: number; cpu?: number; memory?: number; priority?: number; state?: JobState } = {}): QueueJob => ({
  key,
  createdAt,
  priority: options.priority ?? 0,
  state: options.state ?? "pending",
  demand: { gpus: options.gpus ?? 1, cpu: options.cpu ?? 0, memory: options.memory ?? 0 },
});

describe("decideAdmission", () => {
  it("admits in priority order, then arrival order, then name, within the quota", () => {
    const decision = decideAdmission(quota(2), [job("a/late", 30), job("a/early", 10), job("b/high", 40, { priority: 5 }), job("a/tie-b", 20), job("a/tie-a", 20)]);
    expect(decision.admit).toEqual(["b/high", "a/early"]);
    expect(decision.waiting.map((entry) => [entry.key, entry.position])).toEqual([
      ["a/tie-a", 1],
      ["a/tie-b", 2],
      ["a/late", 3],
    ]);
    expect(decision.usage.gpus).toBe(2);
    expect(decision.preempt).toEqual([]);
  });

  it("says why the first waiting job waits, naming who holds the quota, and the others where they stand", () => {
    const decision = decideAdmission(quota(2, { preemption: "Never" }), [job("a/x", 1, { state: "admitted" }), job("b/y", 2, { state: "admitted" }), job("c/z", 3), job("c/w", 4)]);
    expect(decision.admit).toEqual([]);
    expect(decision.waiting).toEqual([
      { key: "c/z", position: 1, reason: "waiting for 1 GPU; 2 of 2 GPUs in use by a/x, b/y" },
      { key: "c/w", position: 2, reason: "behind 1 job in admission order (next: c/z); 2 of 2 GPUs in use by a/x, b/y" },
    ]);
  });

  it("keeps strict order: a job that does not fit blocks smaller ones behind it", () => {
    const decision = decideAdmission(quota(3, { preemption: "Never" }), [job("a/running", 1, { gpus: 2, state: "admitted" }), job("a/big", 2, { gpus: 2 }), job("a/small", 3, { gpus: 1 })]);
    expect(decision.admit).toEqual([]);
    expect(decision.waiting.map((entry) => entry.key)).toEqual(["a/big", "a/small"]);
  });

  it("fails jobs that ask for more than the whole quota, without blocking the others", () => {
    const decision = decideAdmission(quota(2, { cpu: 8000, memory: 2 ** 34 }), [job("a/huge", 1, { gpus: 3 }), job("a/fat", 2, { gpus: 1, memory: 2 ** 35 }), job("a/ok", 3)]);
    expect(decision.neverFit).toEqual([
      { key: "a/huge", message: "the job asks for 3 GPUs but the queue's whole quota is 2 GPUs (FineTuneQueue gpus): it could never be admitted; lower spec.resources or name a larger queue" },
      { key: "a/fat", message: expect.stringContaining("32Gi memory but the queue's whole quota is 16Gi") },
    ]);
    expect(decision.admit).toEqual(["a/ok"]);
  });

  it("counts CPU and memory when the queue limits them, and only then", () => {
    const limited = decideAdmission(quota(4, { cpu: 4000 }), [job("a/one", 1, { cpu: 3000 }), job("a/two", 2, { cpu: 2000 })]);
    expect(limited.admit).toEqual(["a/one"]);
    expect(limited.waiting[0]!.reason).toBe("waiting for 1 CPU; 1 of 4 GPUs in use, 3 of 4 CPU by a/one");
    const unlimited = decideAdmission(quota(4), [job("a/one", 1, { cpu: 3000 }), job("a/two", 2, { cpu: 2000 })]);
    expect(unlimited.admit).toEqual(["a/one", "a/two"]);
  });

  it("preempts lower-priority jobs, the lowest and newest first, only as many as needed", () => {
    const jobs = [
      job("a/old-low", 1, { priority: 1, state: "admitted" }),
      job("a/new-low", 5, { priority: 1, state: "admitted" }),
      job("a/lowest", 3, { priority: 0, state: "admitted" }),
      job("a/urgent", 10, { priority: 10, gpus: 2 }),
    ];
    const decision = decideAdmission(quota(3), jobs);
    expect(decision.admit).toEqual([]);
    expect(decision.preempt).toEqual([
      { key: "a/lowest", by: "a/urgent" },
      { key: "a/new-low", by: "a/urgent" },
    ]);
    expect(decision.waiting[0]).toMatchObject({ key: "a/urgent", position: 1, reason: expect.stringContaining("preempting a/lowest, a/new-low (lower priority)") });
  });

  it("does not preempt more than needed when a large victim would do alone", () => {
    const jobs = [job("a/small", 2, { priority: 0, state: "admitted" }), job("a/large", 1, { priority: 1, gpus: 2, state: "admitted" }), job("a/urgent", 10, { priority: 10, gpus: 2 })];
    // Preemption order takes a/small first, then a/large; a/large alone frees enough, so a/small keeps running.
    expect(decideAdmission(quota(3), jobs).preempt).toEqual([{ key: "a/large", by: "a/urgent" }]);
  });

  it("never preempts with policy Never, nor jobs of equal or higher priority, nor when it would not make room", () => {
    const running = [job("a/x", 1, { priority: 1, state: "admitted" }), job("a/y", 2, { priority: 5, state: "admitted" })];
    expect(decideAdmission(quota(2, { preemption: "Never" }), [...running, job("a/z", 3, { priority: 9 })]).preempt).toEqual([]);
    expect(decideAdmission(quota(2), [...running, job("a/z", 3, { priority: 1 })]).preempt).toEqual([]);
    // Needs both GPUs, but a/y has higher priority: stopping a/x alone would not make room.
    const decision = decideAdmission(quota(2), [...running, job("a/z", 3, { priority: 3, gpus: 2 })]);
    expect(decision.preempt).toEqual([]);
    expect(decision.waiting[0]!.reason).toBe("waiting for 2 GPUs; 2 of 2 GPUs in use by a/x, a/y");
  });

  it("waits for preempted jobs to stop instead of preempting again, and admits once they have", () => {
    const stopping = [job("a/low", 1, { state: "releasing" }), job("a/other", 2, { priority: 0, state: "admitted" })];
    const waiting = decideAdmission(quota(2), [...stopping, job("a/urgent", 3, { priority: 10 })]);
    expect(waiting.preempt).toEqual([]);
    expect(waiting.admit).toEqual([]);
    expect(waiting.waiting[0]!.reason).toContain("waiting for preempted a/low to checkpoint and stop");
    // a/low has stopped and is pending again: a/urgent goes first, a/low waits behind it.
    const after = decideAdmission(quota(2), [job("a/low", 1), stopping[1]!, job("a/urgent", 3, { priority: 10 })]);
    expect(after.admit).toEqual(["a/urgent"]);
    expect(after.waiting).toEqual([{ key: "a/low", position: 1, reason: "waiting for 1 GPU; 2 of 2 GPUs in use by a/other, a/urgent" }]);
  });

  it("admits zero-GPU jobs beside a full GPU quota", () => {
    const decision = decideAdmission(quota(1), [job("a/gpu", 1, { state: "admitted" }), job("a/cpu", 2, { gpus: 0 })]);
    expect(decision.admit).toEqual(["a/cpu"]);
  });
});
