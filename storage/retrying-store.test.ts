import { mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { LocalObjectStore } from "./local-store.ts";
import { StorageError, type ObjectStore } from "./object-store.ts";
import { RetryingObjectStore, type RetryPolicy } from "./retrying-store.ts";

/** A store that is down (Unavailable) for its first `outage` calls, then works. */
function flaky(inner: ObjectStore, outage: number, code: "Unavailable" | "AccessDenied" = "Unavailable"): ObjectStore & { calls: number } {
  const store = {
    uri: inner.uri,
    calls: 0,
    fail(key: string) {
      store.calls += 1;
      if (store.calls <= outage) throw new StorageError(code, `${inner.uri}/${key}`, "storage unavailable (ECONNREFUSED)");
    },
    async get(key: string) {
      store.fail(key);
      return inner.get(key);
    },
    async getStream(key: string) {
      store.fail(key);
      return inner.getStream(key);
    },
    async put(key: string, body: Buffer | string | Readable) {
      store.fail(key);
      return inner.put(key, body);
    },
    async head(key: string) {
      store.fail(key);
      return inner.head(key);
    },
    async *list(prefix?: string) {
      store.fail(prefix ?? "");
      yield* inner.list(prefix);
    },
    async delete(keys: string[]) {
      store.fail(keys[0] ?? "");
      return inner.delete(keys);
    },
  };
  return store;
}

/** A policy on a fake clock: sleeping advances it, so a five-minute budget takes no time. */
function fakeClock(budgetMs: number): RetryPolicy & { waits: number[] } {
  let now = 0;
  const waits: number[] = [];
  return {
    budgetMs,
    baseDelayMs: 1000,
    maxDelayMs: 15_000,
    now: () => now,
    sleep: async (ms) => {
      waits.push(ms);
      now += ms;
    },
    waits,
  };
}

describe("RetryingObjectStore", () => {
  it("waits out an outage with exponential backoff, capped, and then succeeds", async () => {
    const inner = new LocalObjectStore(await mkdtemp(path.join(os.tmpdir(), "kubetune-retry-")));
    const store = flaky(inner, 6);
    const policy = fakeClock(5 * 60_000);
    const retrying = new RetryingObjectStore(store, policy);
    await retrying.put("checkpoints/step-1/tensors.bin", Buffer.from("weights"));
    expect(policy.waits).toEqual([1000, 2000, 4000, 8000, 15_000, 15_000]);
    expect((await retrying.get("checkpoints/step-1/tensors.bin")).toString()).toBe("weights");
  });

  it("gives up after its budget with an error that says so", async () => {
    const inner = new LocalObjectStore(await mkdtemp(path.join(os.tmpdir(), "kubetune-retry-")));
    const retrying = new RetryingObjectStore(flaky(inner, 1000), fakeClock(60_000));
    await expect(retrying.put("a", "b")).rejects.toThrow(/storage unavailable \(ECONNREFUSED\) \(still failing after 60s of retries\)/);
  });

  it("fails at once on what waiting cannot fix, and does not replay a stream", async () => {
    const inner = new LocalObjectStore(await mkdtemp(path.join(os.tmpdir(), "kubetune-retry-")));
    const denied = flaky(inner, 1, "AccessDenied");
    await expect(new RetryingObjectStore(denied, fakeClock(60_000)).get("a")).rejects.toMatchObject({ code: "AccessDenied" });
    expect(denied.calls).toBe(1);
    const down = flaky(inner, 1);
    await expect(new RetryingObjectStore(down, fakeClock(60_000)).put("s", Readable.from([Buffer.from("x")]))).rejects.toMatchObject({ code: "Unavailable" });
    expect(down.calls).toBe(1);
  });

  it("retries a listing from its start", async () => {
    const inner = new LocalObjectStore(await mkdtemp(path.join(os.tmpdir(), "kubetune-retry-")));
    for (const key of ["d/a.jsonl", "d/b.jsonl"]) await inner.put(key, "{}\n");
    const retrying = new RetryingObjectStore(flaky(inner, 2), fakeClock(60_000));
    const keys: string[] = [];
    for await (const object of retrying.list("d/")) keys.push(object.key);
    expect(keys).toEqual(["d/a.jsonl", "d/b.jsonl"]);
  });
});
