import { mkdtemp, stat, utimes } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { LocalObjectStore } from "./local-store.ts";
import { contentSignature, SIGNATURE_BLOCK_BYTES } from "./signature.ts";

async function store(): Promise<{ store: LocalObjectStore; root: string }> {
  const root = await mkdtemp(path.join(os.tmpdir(), "kubetune-signature-"));
  return { store: new LocalObjectStore(root), root };
}

describe("contentSignature", () => {
  it("is the same for an object read twice, and changes when it is replaced by other content of the same size and time", async () => {
    const { store: s, root } = await store();
    await s.put("data/train.jsonl", '{"text": "The cat sat."}\n');
    const first = await contentSignature(s, "data/train.jsonl");
    expect(await contentSignature(s, "data/train.jsonl")).toBe(first);
    const before = await stat(path.join(root, "data/train.jsonl"));
    await s.put("data/train.jsonl", '{"text": "The dog sat."}\n');
    await utimes(path.join(root, "data/train.jsonl"), before.atime, before.mtime);
    expect(await contentSignature(s, "data/train.jsonl")).not.toBe(first);
  });

  it("hashes the first block only, and tells a change of size or time beyond it", async () => {
    const { store: s, root } = await store();
    const block = "x".repeat(SIGNATURE_BLOCK_BYTES);
    await s.put("big", `${block}tail one`);
    const first = await contentSignature(s, "big");
    const before = await stat(path.join(root, "big"));
    await s.put("big", `${block}tail two`);
    await utimes(path.join(root, "big"), before.atime, before.mtime);
    expect(await contentSignature(s, "big")).toBe(first);
    await utimes(path.join(root, "big"), before.atime, new Date(before.mtime.getTime() + 1000));
    expect(await contentSignature(s, "big")).not.toBe(first);
    await s.put("big", `${block}tail three`);
    expect(await contentSignature(s, "big")).not.toBe(first);
  });

  it("is a NotFound StorageError for a missing object", async () => {
    const { store: s } = await store();
    await expect(contentSignature(s, "missing.jsonl")).rejects.toMatchObject({ name: "StorageError", code: "NotFound" });
  });
});
