import { mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { LocalObjectStore } from "../../storage/local-store.ts";
import { checkpointPrefix, loadLatestCheckpoint, pruneCheckpoints, saveCheckpoint } from "./checkpoint.ts";

async function store() {
  return new LocalObjectStore(await mkdtemp(path.join(os.tmpdir(), "kubetune-ckpt-")));
}

const tensors = (seed: number) => ({
  "lora_A.0": { shape: [2, 3], data: Float32Array.from({ length: 6 }, (_, i) => seed + i / 7) },
  "adam.m.0": { shape: [3], data: Float32Array.from([seed, -0, 1e-30]) },
});

describe("checkpoints", () => {
  it("round-trips tensors bit for bit and the training state", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 10, tensors: tensors(1), state: { epoch: 0, cursor: 40, rng: [1, 2, 3, 4] } });
    const loaded = await loadLatestCheckpoint<{ cursor: number }>(s);
    expect(loaded?.step).toBe(10);
    expect(loaded?.state.cursor).toBe(40);
    expect(loaded?.tensors["lora_A.0"]?.shape).toEqual([2, 3]);
    expect(Buffer.from(loaded!.tensors["lora_A.0"]!.data.buffer)).toEqual(Buffer.from(tensors(1)["lora_A.0"].data.buffer));
    expect(Object.is(loaded!.tensors["adam.m.0"]!.data[1], -0)).toBe(true);
  });

  it("resumes from the newest complete checkpoint and ignores a half-written newer one", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 10, tensors: tensors(1), state: {} });
    await saveCheckpoint(s, { step: 20, tensors: tensors(2), state: {} });
    await s.put(`${checkpointPrefix(30)}/tensors.bin`, Buffer.alloc(8));
    expect((await loadLatestCheckpoint(s))?.step).toBe(20);
  });

  it("returns undefined when there is no checkpoint", async () => {
    expect(await loadLatestCheckpoint(await store())).toBeUndefined();
  });

  it("keeps the newest N, and removes incomplete leftovers older than the newest", async () => {
    const s = await store();
    for (const step of [10, 20]) await saveCheckpoint(s, { step, tensors: tensors(step), state: {} });
    await s.put(`${checkpointPrefix(25)}/tensors.bin`, "partial");
    for (const step of [30, 40]) await saveCheckpoint(s, { step, tensors: tensors(step), state: {} });
    await s.put(`${checkpointPrefix(50)}/tensors.bin`, "in progress");
    const removed = await pruneCheckpoints(s, 2);
    expect(removed.sort()).toEqual([checkpointPrefix(10), checkpointPrefix(20), checkpointPrefix(25)]);
    const left = new Set<string>();
    for await (const object of s.list("checkpoints/")) left.add(object.key.split("/")[1]!);
    expect([...left].sort()).toEqual(["step-00000030", "step-00000040", "step-00000050"]);
    expect((await loadLatestCheckpoint(s))?.step).toBe(40);
  });

  it("keeps checkpoints in another folder when asked, and never at the store's root", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 3, tensors: tensors(3), state: {} }, "ckpt");
    await saveCheckpoint(s, { step: 6, tensors: tensors(6), state: {} }, "ckpt");
    await s.put("adapter_config.json", "{}");
    expect((await loadLatestCheckpoint(s, "ckpt"))?.prefix).toBe("ckpt/step-00000006");
    expect(await loadLatestCheckpoint(s)).toBeUndefined();
    expect(await pruneCheckpoints(s, 1, "ckpt")).toEqual(["ckpt/step-00000003"]);
    expect(await s.head("adapter_config.json")).toBeDefined();
    await expect(saveCheckpoint(s, { step: 1, tensors: {}, state: {} }, "")).rejects.toThrow('checkpoint folder must be one path segment, got ""');
  });

  it("refuses a tensor whose data does not fill its shape", async () => {
    await expect(saveCheckpoint(await store(), { step: 1, tensors: { t: { shape: [4], data: new Float32Array(3) } }, state: {} })).rejects.toThrow(
      "checkpoint tensor t: shape [4] needs 4 values, got 3",
    );
  });
});
