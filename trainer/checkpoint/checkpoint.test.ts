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

const jobA = { owner: "a1" };
const jobB = { owner: "b2" };

async function keys(s: LocalObjectStore, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const object of s.list(prefix)) out.push(object.key);
  return out;
}

describe("checkpoints", () => {
  it("round-trips tensors bit for bit and the training state", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 10, tensors: tensors(1), state: { epoch: 0, cursor: 40, rng: [1, 2, 3, 4] } }, jobA);
    const loaded = (await loadLatestCheckpoint<{ cursor: number }>(s, jobA)).checkpoint;
    expect(loaded?.step).toBe(10);
    expect(loaded?.prefix).toBe("checkpoints/step-00000010-a1");
    expect(loaded?.state.cursor).toBe(40);
    expect(loaded?.tensors["lora_A.0"]?.shape).toEqual([2, 3]);
    expect(Buffer.from(loaded!.tensors["lora_A.0"]!.data.buffer)).toEqual(Buffer.from(tensors(1)["lora_A.0"].data.buffer));
    expect(Object.is(loaded!.tensors["adam.m.0"]!.data[1], -0)).toBe(true);
  });

  it("resumes from the newest complete checkpoint and ignores a half-written newer one", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 10, tensors: tensors(1), state: {} }, jobA);
    await saveCheckpoint(s, { step: 20, tensors: tensors(2), state: {} }, jobA);
    await s.put(`${checkpointPrefix(30, "a1")}/tensors.bin`, Buffer.alloc(8));
    expect(await loadLatestCheckpoint(s, jobA)).toMatchObject({ checkpoint: { step: 20 }, unreadable: [] });
  });

  it("finds nothing when there is no checkpoint", async () => {
    expect(await loadLatestCheckpoint(await store(), jobA)).toEqual({ checkpoint: undefined, unreadable: [], foreign: [] });
  });

  it("keeps its newest N, and removes its incomplete leftovers and those newer than the one just saved", async () => {
    const s = await store();
    for (const step of [10, 20]) await saveCheckpoint(s, { step, tensors: tensors(step), state: {} }, jobA);
    await s.put(`${checkpointPrefix(25, "a1")}/tensors.bin`, "partial");
    for (const step of [30, 40]) await saveCheckpoint(s, { step, tensors: tensors(step), state: {} }, jobA);
    // Written by an attempt that was not resumed from (it was unreadable): redone from step 40 on.
    await saveCheckpoint(s, { step: 50, tensors: tensors(50), state: {} }, jobA);
    const removed = await pruneCheckpoints(s, { ...jobA, keep: 2, newest: 40 });
    expect(removed.sort()).toEqual([checkpointPrefix(10, "a1"), checkpointPrefix(20, "a1"), checkpointPrefix(25, "a1"), checkpointPrefix(50, "a1")]);
    expect(new Set((await keys(s, "checkpoints/")).map((key) => key.split("/")[1]))).toEqual(new Set(["step-00000030-a1", "step-00000040-a1"]));
    expect((await loadLatestCheckpoint(s, jobA)).checkpoint?.step).toBe(40);
  });

  it("never deletes what it did not write: files, a model folder or another job's checkpoints beside its own", async () => {
    const s = await store();
    await s.put("shared/base-model/config.json", "{}");
    await s.put("shared/base-model/model.safetensors", "weights");
    await s.put("shared/notes.txt", "keep me");
    await s.put("shared/step-00000001/tensors.bin", "an older kubetune's checkpoint, without an owner");
    await saveCheckpoint(s, { step: 5, tensors: tensors(5), state: {} }, { ...jobA, folder: "shared" });
    await s.put(`${checkpointPrefix(7, "a1", "shared")}/tensors.bin`, "job A is writing this one now");
    const others = await keys(s);

    for (const step of [10, 20, 30]) {
      await saveCheckpoint(s, { step, tensors: tensors(step), state: {} }, { ...jobB, folder: "shared" });
      await pruneCheckpoints(s, { ...jobB, folder: "shared", keep: 1, newest: step });
    }
    const left = await keys(s);
    expect(left.filter((key) => !key.includes("-b2/"))).toEqual(others);
    expect(new Set(left.filter((key) => key.includes("-b2/")).map((key) => key.split("/")[1]))).toEqual(new Set(["step-00000030-b2"]));
  });

  it("keeps two jobs sharing a folder apart: each resumes from its own checkpoints only", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 10, tensors: tensors(1), state: { job: "A" } }, jobA);
    await saveCheckpoint(s, { step: 10, tensors: tensors(2), state: { job: "B" } }, jobB);
    await saveCheckpoint(s, { step: 20, tensors: tensors(3), state: { job: "A" } }, jobA);
    expect((await loadLatestCheckpoint(s, jobA)).checkpoint).toMatchObject({ step: 20, state: { job: "A" } });
    expect((await loadLatestCheckpoint(s, jobB)).checkpoint).toMatchObject({ step: 10, state: { job: "B" } });
    const forC = await loadLatestCheckpoint(s, { owner: "c3" });
    expect(forC).toEqual({ checkpoint: undefined, unreadable: [], foreign: ["checkpoints/step-00000010-a1", "checkpoints/step-00000010-b2", "checkpoints/step-00000020-a1"] });
  });

  it("falls back to the previous checkpoint when the newest is corrupt, and says which and why", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 10, tensors: tensors(1), state: {} }, jobA);
    await saveCheckpoint(s, { step: 20, tensors: tensors(2), state: {} }, jobA);
    await saveCheckpoint(s, { step: 30, tensors: tensors(3), state: {} }, jobA);
    await s.put(`${checkpointPrefix(30, "a1")}/tensors.bin`, Buffer.alloc(48));
    await s.put(`${checkpointPrefix(20, "a1")}/state.json`, "{ not json");
    const found = await loadLatestCheckpoint(s, jobA);
    expect(found.checkpoint?.step).toBe(10);
    expect(found.unreadable).toEqual([
      { prefix: "checkpoints/step-00000030-a1", problem: expect.stringMatching(/tensors\.bin: content does not match the manifest's sha256/) },
      { prefix: "checkpoints/step-00000020-a1", problem: expect.stringMatching(/state\.json: content does not match the manifest's sha256/) },
    ]);
  });

  it("keeps checkpoints in another folder when asked, and never at the store's root", async () => {
    const s = await store();
    await saveCheckpoint(s, { step: 3, tensors: tensors(3), state: {} }, { ...jobA, folder: "ckpt" });
    await saveCheckpoint(s, { step: 6, tensors: tensors(6), state: {} }, { ...jobA, folder: "ckpt" });
    await s.put("adapter_config.json", "{}");
    expect((await loadLatestCheckpoint(s, { ...jobA, folder: "ckpt" })).checkpoint?.prefix).toBe("ckpt/step-00000006-a1");
    expect((await loadLatestCheckpoint(s, jobA)).checkpoint).toBeUndefined();
    expect(await pruneCheckpoints(s, { ...jobA, folder: "ckpt", keep: 1, newest: 6 })).toEqual(["ckpt/step-00000003-a1"]);
    expect(await s.head("adapter_config.json")).toBeDefined();
    await expect(saveCheckpoint(s, { step: 1, tensors: {}, state: {} }, { ...jobA, folder: "" })).rejects.toThrow('checkpoint folder must be one path segment, got ""');
    await expect(saveCheckpoint(s, { step: 1, tensors: {}, state: {} }, { owner: "A/B" })).rejects.toThrow('checkpoint owner must be lowercase letters and digits, got "A/B"');
  });

  it("refuses a tensor whose data does not fill its shape", async () => {
    await expect(saveCheckpoint(await store(), { step: 1, tensors: { t: { shape: [4], data: new Float32Array(3) } }, state: {} }, jobA)).rejects.toThrow(
      "checkpoint tensor t: shape [4] needs 4 values, got 3",
    );
  });
});
