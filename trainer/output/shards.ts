import type { StreamedFile } from "../../storage/publish.ts";
import type { NamedTensor, TensorMap } from "../safetensors/safetensors.ts";

/**
 * A whole model's weights as Hugging Face's save_pretrained writes them: one model.safetensors
 * when they fit in one shard, else model-00001-of-0000N.safetensors ... and
 * model.safetensors.index.json mapping each tensor to its shard. Transformers, vLLM and TGI load
 * either layout.
 *
 * Each shard is a StreamedFile: its bytes are produced tensor by tensor while the store writes
 * them (a multipart upload on S3), so no shard is ever built whole in memory, and each tensor's
 * values are dropped from the map once written, so memory shrinks as the upload proceeds.
 */

export const SINGLE_WEIGHTS_FILE = "model.safetensors";
export const WEIGHTS_INDEX_FILE = "model.safetensors.index.json";

/**
 * The default largest shard: 5 GB (decimal, as transformers counts), the size of most sharded
 * checkpoints on the Hub (transformers 4's default), well under S3's 5 TB object limit and
 * small enough that a loader can map one shard at a time.
 */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

/** Bytes per float32 value: merged weights are written in float32, as the trainer holds them. */
const F32_BYTES = 4;

export interface ShardPlan {
  /** Shard file names in order, and the tensor names each holds. */
  shards: { file: string; tensors: string[] }[];
  /** Sum of every tensor's byte size: the index's metadata.total_size. */
  totalSize: number;
}

/**
 * Splits tensors (in the given order: the model's state-dict order) into shards of at most
 * `maxShardBytes` of tensor data, as huggingface_hub's split_torch_state_dict_into_shards does
 * for save_pretrained: a tensor goes into the current shard unless it would overflow it, when a
 * new shard starts; a tensor larger than the limit gets a shard of its own (placed where
 * transformers places it, before the shard being filled).
 */
export function planShards(tensors: readonly { name: string; bytes: number }[], maxShardBytes: number = DEFAULT_MAX_SHARD_BYTES): ShardPlan {
  if (!(Number.isSafeInteger(maxShardBytes) && maxShardBytes > 0)) throw new Error(`max shard size must be a positive whole number of bytes, got ${maxShardBytes}`);
  const groups: string[][] = [];
  let current: string[] = [];
  let currentSize = 0;
  let totalSize = 0;
  for (const { name, bytes } of tensors) {
    totalSize += bytes;
    if (bytes > maxShardBytes) {
      groups.push([name]);
      continue;
    }
    if (currentSize + bytes > maxShardBytes) {
      groups.push(current);
      current = [];
      currentSize = 0;
    }
    current.push(name);
    currentSize += bytes;
  }
  if (current.length > 0) groups.push(current);
  const count = groups.length;
  const pad = (n: number): string => String(n).padStart(5, "0");
  const shards = groups.map((names, i) => ({ file: count === 1 ? SINGLE_WEIGHTS_FILE : `model-${pad(i + 1)}-of-${pad(count)}.safetensors`, tensors: names }));
  return { shards, totalSize };
}

/**
 * The weight files of a model folder for `tensors` (float32): the shards as StreamedFiles and,
 * when there is more than one, the index in transformers' exact format (indent 2, sorted keys,
 * metadata total_parameters and total_size). The map is consumed: each tensor is removed from
 * it once its shard has been written.
 */
export function shardedWeightFiles(tensors: TensorMap, options: { maxShardBytes?: number } = {}): Record<string, StreamedFile | string> {
  for (const [name, tensor] of tensors) checkTensor(name, tensor);
  const plan = planShards(
    [...tensors].map(([name, tensor]) => ({ name, bytes: tensor.data.length * F32_BYTES })),
    options.maxShardBytes,
  );
  const files: Record<string, StreamedFile | string> = {};
  for (const shard of plan.shards) {
    // Within a shard tensors are in name order, as writeSafetensors writes them, so a model that
    // fits one shard gets the same bytes as before sharding existed.
    const names = [...shard.tensors].sort();
    files[shard.file] = { chunks: () => shardChunks(tensors, names) };
  }
  if (plan.shards.length > 1) {
    const weightMap: Record<string, string> = {};
    for (const shard of plan.shards) for (const name of shard.tensors) weightMap[name] = shard.file;
    const totalParameters = plan.totalSize / F32_BYTES;
    files[WEIGHTS_INDEX_FILE] = `${JSON.stringify(sortKeys({ metadata: { total_parameters: totalParameters, total_size: plan.totalSize }, weight_map: weightMap }), null, 2)}\n`;
  }
  return files;
}

/** The safetensors header of a shard holding `names` (float32), padded so the data starts 8-byte aligned. */
export function shardHeader(tensors: TensorMap, names: readonly string[]): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const name of names) {
    const tensor = tensors.get(name)!;
    const size = tensor.data.length * F32_BYTES;
    header[name] = { dtype: "F32", shape: tensor.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json, "utf8")) % 8)) % 8);
  const body = Buffer.from(json, "utf8");
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(body.length));
  return Buffer.concat([length, body]);
}

async function* shardChunks(tensors: TensorMap, names: readonly string[]): AsyncGenerator<Buffer> {
  const missing = names.find((name) => !tensors.has(name));
  if (missing !== undefined) throw new Error(`shard tensor "${missing}" was already written; a shard's chunks can be read once`);
  yield shardHeader(tensors, names);
  for (const name of names) {
    const { data } = tensors.get(name)!;
    // A view, not a copy; the map lets go of the values once the consumer has taken them.
    yield Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    tensors.delete(name);
  }
}

function checkTensor(name: string, tensor: NamedTensor): void {
  if (name === "" || name === "__metadata__") throw new Error(`safetensors: invalid tensor name ${JSON.stringify(name)}`);
  const count = tensor.shape.reduce((product, dim) => product * dim, 1);
  if (!tensor.shape.every((dim) => Number.isInteger(dim) && dim >= 0) || count !== tensor.data.length) {
    throw new Error(`safetensors: tensor "${name}" has shape [${tensor.shape.join(", ")}] but ${tensor.data.length} values`);
  }
}

/** A copy of `value` with every object's keys sorted, as Python's json.dumps(sort_keys=True) writes them. */
function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value !== "object" || value === null) return value;
  return Object.fromEntries(
    Object.keys(value)
      .sort()
      .map((key) => [key, sortKeys((value as Record<string, unknown>)[key])]),
  );
}

/**
 * A shard size as transformers' max_shard_size takes it: bytes, or a number with KB/MB/GB
 * (powers of 1000) or KiB/MiB/GiB (powers of 1024), e.g. "5GB", "500MiB".
 */
export function parseShardSize(value: string | number, field = "max shard size"): number {
  if (typeof value === "number") {
    if (Number.isSafeInteger(value) && value > 0) return value;
    throw new Error(`${field}: must be a positive whole number of bytes, got ${value}`);
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$/i.exec(value);
  if (!match) throw new Error(`${field}: "${value}" is not a size; use bytes or a number with KB, MB, GB (or KiB, MiB, GiB), e.g. 5GB`);
  const units: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40 };
  const bytes = Math.floor(Number(match[1]) * units[(match[2] ?? "B").toUpperCase()]!);
  if (!(bytes > 0)) throw new Error(`${field}: "${value}" is zero bytes`);
  return bytes;
}
