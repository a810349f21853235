import { describe, expect, it, vi } from "vitest";
import { MAX_TIMER_MS, WorkQueue } from "./workqueue.ts";

describe("WorkQueue", () => {
  it("queues a key once however often it is added", async () => {
    const queue = new WorkQueue();
    queue.add("a");
    queue.add("b");
    queue.add("a");
    expect(queue.length).toBe(2);
    expect(await queue.get()).toBe("a");
    expect(await queue.get()).toBe("b");
  });

  it("never hands a key being processed to a second worker, and requeues it when done", async () => {
    const queue = new WorkQueue();
    queue.add("a");
    const first = await queue.get();
    queue.add("a");
    expect(queue.length).toBe(0);
    queue.done(first!);
    expect(queue.length).toBe(1);
    expect(await queue.get()).toBe("a");
  });

  it("wakes a waiting worker when a key arrives", async () => {
    const queue = new WorkQueue();
    const waiting = queue.get();
    queue.add("late");
    expect(await waiting).toBe("late");
  });

  it("backs off exponentially per key until forgotten", () => {
    const queue = new WorkQueue({ baseMs: 100, maxMs: 1000 });
    expect([1, 2, 3, 4, 5].map(() => queue.addRateLimited("k"))).toEqual([100, 200, 400, 800, 1000]);
    queue.forget("k");
    expect(queue.addRateLimited("k")).toBe(100);
    queue.shutDown();
  });

  it("delivers delayed keys after their delay", async () => {
    const queue = new WorkQueue();
    queue.addAfter("later", 30);
    expect(queue.length).toBe(0);
    const started = Date.now();
    expect(await queue.get()).toBe("later");
    expect(Date.now() - started).toBeGreaterThanOrEqual(25);
  });

  it("releases waiting workers on shutdown", async () => {
    const queue = new WorkQueue();
    const waiting = queue.get();
    queue.shutDown();
    expect(await waiting).toBeUndefined();
  });

  it("keeps the earliest of two delays for the same key", async () => {
    const queue = new WorkQueue();
    queue.addAfter("a", 60_000);
    queue.addAfter("a", 20);
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(queue.length).toBe(1);
    queue.addAfter("b", 20);
    queue.addAfter("b", 60_000);
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(queue.length).toBe(2);
    queue.shutDown();
  });

  it("does not fire a delay longer than a Node timer holds at once (a year's ttlSecondsAfterFinished)", () => {
    vi.useFakeTimers();
    try {
      const queue = new WorkQueue();
      queue.addAfter("later", 365 * 24 * 3600 * 1000);
      vi.advanceTimersByTime(1000);
      expect(queue.length).toBe(0);
      vi.advanceTimersByTime(MAX_TIMER_MS);
      expect(queue.length).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });
});
