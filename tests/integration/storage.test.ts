import { describe, expect, it } from "vitest";
import { freePort } from "../../localcluster/process.ts";
import { objectStoreContract } from "../../storage/object-store.contract.ts";
import { S3ObjectStore } from "../../storage/s3-store.ts";
import { cluster, s3Store } from "./harness.ts";

describe("S3ObjectStore against MinIO", () => {
  objectStoreContract(async () => s3Store("contract"));

  it("streams an object larger than one multipart part", async () => {
    const store = s3Store("large");
    const size = 12 * 2 ** 20;
    const { Readable } = await import("node:stream");
    async function* chunks() {
      for (let sent = 0; sent < size; sent += 2 ** 20) yield Buffer.alloc(2 ** 20, sent / 2 ** 20);
    }
    await store.put("big.bin", Readable.from(chunks()));
    expect(await store.head("big.bin")).toMatchObject({ size });
    const data = await store.get("big.bin");
    expect(data[0]).toBe(0);
    expect(data[size - 1]).toBe(11);
  });

  it("reports wrong credentials as AccessDenied, naming the object and what to check", async () => {
    const { s3 } = cluster();
    const store = new S3ObjectStore(s3.bucket, "denied", {
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: "wrong-secret" },
    });
    await expect(store.get("anything")).rejects.toMatchObject({ code: "AccessDenied", message: expect.stringMatching(/s3:\/\/.*denied\/anything.*credentials/) });
  });

  it("reports an unreachable endpoint as Unavailable", async () => {
    const store = new S3ObjectStore("bucket", "", {
      endpoint: `http://127.0.0.1:${await freePort()}`,
      forcePathStyle: true,
      credentials: { accessKeyId: "a", secretAccessKey: "b" },
      maxAttempts: 1,
    });
    await expect(store.head("x")).rejects.toMatchObject({ code: "Unavailable", message: expect.stringContaining("spec.storage.endpoint") });
  });

  it("reports a missing bucket as NotFound", async () => {
    const { s3 } = cluster();
    const store = new S3ObjectStore("no-such-bucket-kubetune", "", {
      endpoint: s3.endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    await expect(store.get("x")).rejects.toMatchObject({ code: "NotFound", message: expect.stringContaining("no such bucket") });
  });
});
