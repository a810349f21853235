import { Readable } from "node:stream";
import { expect, it } from "vitest";
import { StorageError, type ObjectStore } from "./object-store.ts";
import { publish, readManifest, readPublishedFile, MANIFEST_FILE } from "./publish.ts";

/**
 * The behaviour every ObjectStore must have, run against each implementation (the local
 * folder in unit tests, MinIO in integration tests).
 */
export function objectStoreContract(makeStore: () => Promise<ObjectStore>): void {
  it("puts and gets bytes, strings and streams", async () => {
    const store = await makeStore();
    await store.put("a/bytes.bin", Buffer.from([0, 1, 2, 255]));
    await store.put("a/text.txt", "héllo");
    await store.put("a/stream.txt", Readable.from(["one ", "two ", "three"]));
    expect([...(await store.get("a/bytes.bin"))]).toEqual([0, 1, 2, 255]);
    expect((await store.get("a/text.txt")).toString("utf8")).toBe("héllo");
    expect((await store.get("a/stream.txt")).toString("utf8")).toBe("one two three");
    const chunks: Buffer[] = [];
    for await (const chunk of await store.getStream("a/text.txt")) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).toString("utf8")).toBe("héllo");
  });

  it("overwrites an object whole", async () => {
    const store = await makeStore();
    await store.put("k", "first version, longer");
    await store.put("k", "second");
    expect((await store.get("k")).toString()).toBe("second");
  });

  it("lists by prefix in key order with sizes", async () => {
    const store = await makeStore();
    for (const key of ["x/2", "x/1", "x/sub/3", "y/4"]) await store.put(key, key);
    const listed = [];
    for await (const info of store.list("x/")) listed.push([info.key, info.size]);
    expect(listed).toEqual([
      ["x/1", 3],
      ["x/2", 3],
      ["x/sub/3", 7],
    ]);
  });

  it("reports a missing object as NotFound naming its URI", async () => {
    const store = await makeStore();
    const error = await store.get("missing/object").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).code).toBe("NotFound");
    expect((error as StorageError).message).toContain("missing/object");
    expect(await store.head("missing/object")).toBeUndefined();
    await expect(store.getStream("missing/object")).rejects.toMatchObject({ code: "NotFound" });
  });

  it("heads and deletes objects; deleting a missing key is fine", async () => {
    const store = await makeStore();
    await store.put("d/one", "12345");
    expect(await store.head("d/one")).toMatchObject({ key: "d/one", size: 5 });
    await store.delete(["d/one", "d/never-existed"]);
    expect(await store.head("d/one")).toBeUndefined();
  });

  it("publishes a folder with its manifest last and verifies content on read", async () => {
    const store = await makeStore();
    const manifest = await publish(store, "ckpt/step-10", { "weights.bin": Buffer.from([1, 2, 3]), "state.json": "{}" }, { step: 10 });
    expect(manifest.files.map((file) => file.name)).toEqual(["weights.bin", "state.json"]);
    const read = await readManifest(store, "ckpt/step-10");
    expect(read?.metadata).toEqual({ step: 10 });
    expect([...(await readPublishedFile(store, "ckpt/step-10", read!, "weights.bin"))]).toEqual([1, 2, 3]);
    await store.put("ckpt/step-10/weights.bin", Buffer.from([9, 9, 9]));
    await expect(readPublishedFile(store, "ckpt/step-10", read!, "weights.bin")).rejects.toMatchObject({ code: "Corrupt" });
  });

  it("tells complete published folders from one without its manifest", async () => {
    const store = await makeStore();
    await publish(store, "runs/step-000010", { "w.bin": "a" }, { step: 10 });
    await publish(store, "runs/step-000020", { "w.bin": "b" }, { step: 20 });
    // A writer that died after its data but before its manifest.
    await store.put("runs/step-000030/w.bin", "c");
    expect((await readManifest(store, "runs/step-000010"))?.metadata).toEqual({ step: 10 });
    expect((await readManifest(store, "runs/step-000020"))?.metadata).toEqual({ step: 20 });
    expect(await readManifest(store, "runs/step-000030")).toBeUndefined();
    await expect(publish(store, "bad", { [MANIFEST_FILE]: "x" })).rejects.toThrow(/reserved/);
  });
}
