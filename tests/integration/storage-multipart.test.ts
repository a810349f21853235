import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { publish, sha256 } from "../../storage/publish.ts";
import { MIN_PART_SIZE, S3ObjectStore } from "../../storage/s3-store.ts";
import { shardedWeightFiles, WEIGHTS_INDEX_FILE } from "../../trainer/output/shards.ts";
import { readSafetensors, type TensorMap } from "../../trainer/safetensors/safetensors.ts";
import { cluster } from "./harness.ts";

/**
 * Merged-model shards go to S3 as multipart uploads (issue 9, defect 4): a store forced to S3's
 * smallest part (5 MiB) must upload each shard in several parts, and what lands must be exactly
 * what the manifest and the index say.
 */
function store(prefix: string): S3ObjectStore {
  const { s3 } = cluster();
  return new S3ObjectStore(s3.bucket, `${prefix}-${randomBytes(3).toString("hex")}`, {
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    partSize: MIN_PART_SIZE,
  });
}

/** S3's ETag of a multipart object ends in -<number of parts>. */
function partsOf(etag: string | undefined): number {
  const match = /-(\d+)"?$/.exec(etag ?? "");
  return match ? Number(match[1]) : 1;
}

function weights(): TensorMap {
  const tensors: TensorMap = new Map();
  // Three 4 MiB tensors and one 1 MiB: two shards of 12 MB at most, each more than two parts.
  for (const [name, values] of [
    ["model.embed_tokens.weight", 2 ** 20],
    ["model.layers.0.mlp.up_proj.weight", 2 ** 20],
    ["model.layers.0.mlp.down_proj.weight", 2 ** 20],
    ["lm_head.weight", 2 ** 18],
  ] as const) {
    const data = new Float32Array(values);
    for (let i = 0; i < values; i++) data[i] = Math.sin(i + name.length);
    tensors.set(name, { shape: [values / 256, 256], data });
  }
  return tensors;
}

describe("multipart uploads of merged-model shards to MinIO", () => {
  it("streams each shard in several parts, and the objects match the manifest and the index", async () => {
    const s3 = store("shards");
    const expected = weights();
    const files = shardedWeightFiles(weights(), { maxShardBytes: 9_000_000 });
    const manifest = await publish(s3, "merged", files);
    const index = JSON.parse(files[WEIGHTS_INDEX_FILE] as string) as { weight_map: Record<string, string> };
    const shards = [...new Set(Object.values(index.weight_map))].sort();
    expect(shards).toEqual(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    const seen: string[] = [];
    for (const shard of shards) {
      const info = await s3.head(`merged/${shard}`);
      const entry = manifest.files.find((file) => file.name === shard)!;
      expect(info?.size).toBe(entry.size);
      // 8 MiB and 5 MiB of weights in 5 MiB parts.
      expect(partsOf(info?.etag)).toBe(Math.ceil(entry.size / MIN_PART_SIZE));
      expect(partsOf(info?.etag)).toBeGreaterThanOrEqual(2);
      const bytes = await s3.get(`merged/${shard}`);
      expect(sha256(bytes)).toBe(entry.sha256);
      for (const [name, tensor] of readSafetensors(bytes, shard).tensors) {
        expect(index.weight_map[name]).toBe(shard);
        // Compared as bytes: a deep equality over a million floats takes seconds.
        const want = expected.get(name)!.data;
        expect(Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength)), name).toBe(true);
        seen.push(name);
      }
    }
    expect(seen.sort()).toEqual([...expected.keys()].sort());
    s3.close();
  }, 120_000);

  it("uploads a buffer larger than one part in parts, and leaves no object when a stream fails part way", async () => {
    const s3 = store("parts");
    const buffer = randomBytes(MIN_PART_SIZE + 1234);
    await s3.put("buffer.bin", buffer);
    expect(partsOf((await s3.head("buffer.bin"))?.etag)).toBe(2);
    expect((await s3.get("buffer.bin")).equals(buffer)).toBe(true);

    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(MIN_PART_SIZE + 1);
      throw new Error("merge failed mid-shard");
    }
    await expect(s3.put("broken.safetensors", Readable.from(failing(), { objectMode: false }))).rejects.toThrow(/merge failed mid-shard/);
    expect(await s3.head("broken.safetensors")).toBeUndefined();
    s3.close();
  }, 120_000);

  it("refuses a part size under S3's 5 MiB minimum, naming it", () => {
    const { s3 } = cluster();
    expect(() => new S3ObjectStore(s3.bucket, "x", { endpoint: s3.endpoint, forcePathStyle: true, partSize: 1024 })).toThrow(/multipart part size must be .* at least 5242880/);
  });
});
