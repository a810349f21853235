import { mkdtemp, readdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { LocalObjectStore } from "./local-store.ts";
import { objectStoreContract } from "./object-store.contract.ts";
import { openStore, parseLocation } from "./open-store.ts";
import { S3ObjectStore } from "./s3-store.ts";

describe("LocalObjectStore", () => {
  objectStoreContract(async () => new LocalObjectStore(await mkdtemp(path.join(os.tmpdir(), "kubetune-store-"))));

  it("leaves no temporary file behind after a put", async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), "kubetune-store-"));
    await new LocalObjectStore(root).put("dir/file", "content");
    expect(await readdir(path.join(root, "dir"))).toEqual(["file"]);
  });

  it("refuses keys that escape its folder", async () => {
    const store = new LocalObjectStore(await mkdtemp(path.join(os.tmpdir(), "kubetune-store-")));
    await expect(store.get("../../etc/passwd")).rejects.toMatchObject({ code: "InvalidUri" });
  });
});

describe("parseLocation and openStore", () => {
  it("reads s3 URIs as bucket and prefix", () => {
    expect(parseLocation("s3://my-bucket/models/llama/")).toEqual({ kind: "s3", bucket: "my-bucket", prefix: "models/llama" });
    expect(parseLocation("s3://my-bucket")).toEqual({ kind: "s3", bucket: "my-bucket", prefix: "" });
  });

  it("resolves relative paths against the base folder and accepts file URIs", () => {
    expect(parseLocation("data/train.jsonl", "/jobs")).toEqual({ kind: "local", path: "/jobs/data/train.jsonl" });
    expect(parseLocation("file:///abs/dir")).toEqual({ kind: "local", path: "/abs/dir" });
  });

  it("names the problem in a bad URI", () => {
    expect(() => parseLocation("s3://Bad_Bucket/x")).toThrow(/not a valid S3 bucket name/);
    expect(() => parseLocation("gs://bucket/x")).toThrow(/unsupported scheme/);
  });

  it("opens the matching implementation", () => {
    expect(openStore("s3://bucket/prefix")).toBeInstanceOf(S3ObjectStore);
    expect(openStore("/tmp")).toBeInstanceOf(LocalObjectStore);
    expect(openStore("s3://bucket/prefix").uri).toBe("s3://bucket/prefix");
  });
});
