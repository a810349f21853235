import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { MemoryObjectStore } from "../data/memory-store.ts";
import { publish, sha256 } from "../../storage/publish.ts";
import { readSafetensors, writeSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { parseShardSize, planShards, shardedWeightFiles, SINGLE_WEIGHTS_FILE, WEIGHTS_INDEX_FILE } from "./shards.ts";

/** What transformers' save_pretrained(max_shard_size="20KB") wrote for a tiny Llama (scripts/hf/make-shard-fixture.py). */
const FIXTURE = new URL("../../tests/fixtures/hf/shards/", import.meta.url);
const fixture = JSON.parse(readFileSync(new URL("tensors.json", FIXTURE), "utf8")) as {
  maxShardSize: string;
  files: string[];
  tensors: { name: string; shape: number[] }[];
};
const transformersIndex = readFileSync(new URL(WEIGHTS_INDEX_FILE, FIXTURE), "utf8");

function tensorsOf(entries: readonly { name: string; shape: number[] }[]): TensorMap {
  const map: TensorMap = new Map();
  let seed = 1;
  for (const { name, shape } of entries) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = ((seed++ * 2654435761) % 1000) / 1000 - 0.5;
    map.set(name, { shape, data });
  }
  return map;
}

async function collect(content: unknown): Promise<Buffer> {
  if (typeof content === "string" || Buffer.isBuffer(content)) return Buffer.from(content);
  const chunks: Buffer[] = [];
  for await (const chunk of (content as { chunks(): AsyncIterable<Buffer> }).chunks()) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

describe("sharding merged weights as save_pretrained does", () => {
  it("splits a tiny Llama into the shards transformers made, with a byte-identical index", async () => {
    const tensors = tensorsOf(fixture.tensors);
    const files = shardedWeightFiles(tensors, { maxShardBytes: parseShardSize(fixture.maxShardSize) });
    expect(Object.keys(files).filter((name) => name !== WEIGHTS_INDEX_FILE)).toEqual(fixture.files);
    expect(files[WEIGHTS_INDEX_FILE]).toBe(transformersIndex);
  });

  it("streams shards that hold exactly the tensors the index names, and consumes the map as it goes", async () => {
    const original = tensorsOf(fixture.tensors);
    const tensors = tensorsOf(fixture.tensors);
    const files = shardedWeightFiles(tensors, { maxShardBytes: 20_000 });
    const index = JSON.parse(files[WEIGHTS_INDEX_FILE] as string) as { weight_map: Record<string, string> };
    const seen = new Set<string>();
    for (const file of fixture.files) {
      const bytes = await collect(files[file]);
      const shard = readSafetensors(bytes, file);
      expect(shard.metadata).toEqual({ format: "pt" });
      for (const [name, tensor] of shard.tensors) {
        expect(index.weight_map[name]).toBe(file);
        expect(tensor).toEqual(original.get(name));
        seen.add(name);
        expect(tensors.has(name)).toBe(false);
      }
      // A shard's bytes are what writeSafetensors makes of its tensors.
      expect(bytes.equals(writeSafetensors(new Map([...shard.tensors])))).toBe(true);
    }
    expect([...seen].sort()).toEqual([...original.keys()].sort());
    expect(tensors.size).toBe(0);
  });

  it("writes one model.safetensors, byte-identical to writeSafetensors, and no index when the model fits one shard", async () => {
    const tensors = tensorsOf(fixture.tensors);
    const expected = writeSafetensors(tensorsOf(fixture.tensors));
    const files = shardedWeightFiles(tensors);
    expect(Object.keys(files)).toEqual([SINGLE_WEIGHTS_FILE]);
    expect((await collect(files[SINGLE_WEIGHTS_FILE])).equals(expected)).toBe(true);
  });

  it("puts a tensor larger than a shard in a shard of its own, before the one being filled, as huggingface_hub does", () => {
    const plan = planShards(
      [
        { name: "a", bytes: 40 },
        { name: "b", bytes: 40 },
        { name: "big", bytes: 250 },
        { name: "c", bytes: 30 },
        { name: "d", bytes: 80 },
      ],
      100,
    );
    expect(plan.shards.map((shard) => shard.tensors)).toEqual([["big"], ["a", "b"], ["c"], ["d"]]);
    expect(plan.shards.map((shard) => shard.file)).toEqual([
      "model-00001-of-00004.safetensors",
      "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors",
      "model-00004-of-00004.safetensors",
    ]);
    expect(plan.totalSize).toBe(440);
  });

  it("publishes streamed shards with their sizes and hashes in the manifest", async () => {
    const store = new MemoryObjectStore();
    const files = shardedWeightFiles(tensorsOf(fixture.tensors), { maxShardBytes: 20_000 });
    const manifest = await publish(store, "merged", files);
    expect(manifest.files.map((file) => file.name)).toEqual([...fixture.files, WEIGHTS_INDEX_FILE]);
    for (const entry of manifest.files) {
      const stored = await store.get(`merged/${entry.name}`);
      expect([entry.size, entry.sha256]).toEqual([stored.length, sha256(stored)]);
    }
  });

  it("reads sizes as transformers' max_shard_size does, and refuses what is not one", () => {
    expect(parseShardSize("5GB")).toBe(5_000_000_000);
    expect(parseShardSize("500MiB")).toBe(500 * 2 ** 20);
    expect(parseShardSize("20KB")).toBe(20_000);
    expect(parseShardSize("1234")).toBe(1234);
    expect(() => parseShardSize("five gigs", "--max-shard-size")).toThrow(/--max-shard-size: "five gigs" is not a size/);
    expect(() => parseShardSize("0GB")).toThrow(/zero bytes/);
  });
});
