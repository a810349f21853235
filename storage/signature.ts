import { createHash } from "node:crypto";
import { StorageError, type ObjectStore } from "./object-store.ts";

/** Bytes at the start of an object that its signature hashes. */
export const SIGNATURE_BLOCK_BYTES = 64 * 1024;

/**
 * What tells whether an object is the one seen before, without reading all of it: its size,
 * its version tag (the ETag on S3, else the modification time) and the sha256 of its first
 * 64 KiB. A dataset or model replaced in place changes it (the hash catches a replacement that
 * keeps the size and time), so a job does not resume on other inputs than it started with.
 */
export async function contentSignature(store: ObjectStore, key: string): Promise<string> {
  const info = await store.head(key);
  if (!info) throw new StorageError("NotFound", `${store.uri.replace(/\/+$/, "")}/${key}`, "no such object");
  const hash = createHash("sha256");
  let read = 0;
  const stream = await store.getStream(key);
  try {
    for await (const chunk of stream) {
      const bytes = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
      hash.update(bytes.subarray(0, SIGNATURE_BLOCK_BYTES - read));
      read += Math.min(bytes.length, SIGNATURE_BLOCK_BYTES - read);
      if (read >= SIGNATURE_BLOCK_BYTES) break;
    }
  } finally {
    stream.destroy();
  }
  const version = info.etag ?? info.lastModified?.toISOString() ?? "";
  return `${info.size}:${version}:${hash.digest("hex")}`;
}
