import { joinKey, type ObjectStore } from "../../storage/object-store.ts";
import { listPublished, publish, readPublishedFile } from "../../storage/publish.ts";

/**
 * The checkpoint format. A checkpoint is a published folder (data first, manifest last; see
 * storage/publish.ts) under `checkpoints/step-<8 digits>/` holding:
 * - `tensors.bin`: every saved tensor as raw little-endian float32, back to back;
 * - `state.json`: the tensor index (name, shape, byte offset) and the training state (step,
 *   data position, RNG states, metrics so far) that the loop needs to continue exactly.
 * Raw float32 keeps resume bit-exact; the loop decides what goes in (adapter weights and
 * optimizer moments).
 */
export const CHECKPOINTS_PREFIX = "checkpoints";

export interface SavedTensor {
  shape: number[];
  data: Float32Array;
}

export interface Checkpoint<State> {
  step: number;
  tensors: Record<string, SavedTensor>;
  state: State;
}

interface StateFile<State> {
  format: "kubetune-checkpoint/v1";
  step: number;
  tensors: { name: string; shape: number[]; offset: number; length: number }[];
  state: State;
}

/**
 * `folder` is the store's folder that holds the checkpoints, "checkpoints" unless a job's
 * checkpoint.uri names another; it is a single path segment, never the store's root, so that
 * pruning can never touch files beside it.
 */
export function checkpointPrefix(step: number, folder = CHECKPOINTS_PREFIX): string {
  return joinKey(checkFolder(folder), `step-${String(step).padStart(8, "0")}`);
}

/** Saves a checkpoint atomically and returns its prefix in the store. */
export async function saveCheckpoint<State>(store: ObjectStore, checkpoint: Checkpoint<State>, folder = CHECKPOINTS_PREFIX): Promise<string> {
  const entries = Object.entries(checkpoint.tensors);
  const total = entries.reduce((sum, [, tensor]) => sum + tensor.data.length, 0);
  const bytes = Buffer.alloc(total * 4);
  const index: StateFile<State>["tensors"] = [];
  let offset = 0;
  for (const [name, tensor] of entries) {
    const expected = tensor.shape.reduce((product, size) => product * size, 1);
    if (expected !== tensor.data.length) throw new Error(`checkpoint tensor ${name}: shape [${tensor.shape}] needs ${expected} values, got ${tensor.data.length}`);
    Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength).copy(bytes, offset);
    index.push({ name, shape: tensor.shape, offset, length: tensor.data.length });
    offset += tensor.data.byteLength;
  }
  const stateFile: StateFile<State> = { format: "kubetune-checkpoint/v1", step: checkpoint.step, tensors: index, state: checkpoint.state };
  const prefix = checkpointPrefix(checkpoint.step, folder);
  await publish(store, prefix, { "tensors.bin": bytes, "state.json": JSON.stringify(stateFile) }, { step: checkpoint.step });
  return prefix;
}

/** The newest complete checkpoint, or undefined. Half-written ones (no manifest) are ignored. */
export async function loadLatestCheckpoint<State>(
  store: ObjectStore,
  folder = CHECKPOINTS_PREFIX,
): Promise<(Checkpoint<State> & { prefix: string }) | undefined> {
  const complete = await listPublished(store, checkFolder(folder));
  const newest = complete.at(-1);
  if (!newest) return undefined;
  const stateFile = JSON.parse((await readPublishedFile(store, newest.prefix, newest.manifest, "state.json")).toString("utf8")) as StateFile<State>;
  if (stateFile.format !== "kubetune-checkpoint/v1") {
    throw new Error(`${store.uri}/${newest.prefix}/state.json: unknown checkpoint format ${JSON.stringify(stateFile.format)}`);
  }
  const bytes = await readPublishedFile(store, newest.prefix, newest.manifest, "tensors.bin");
  const tensors: Record<string, SavedTensor> = {};
  for (const entry of stateFile.tensors) {
    // Copy out: the slice must be 4-byte aligned and must not alias the download buffer.
    const data = new Float32Array(entry.length);
    Buffer.from(data.buffer).set(bytes.subarray(entry.offset, entry.offset + entry.length * 4));
    tensors[entry.name] = { shape: entry.shape, data };
  }
  return { prefix: newest.prefix, step: stateFile.step, tensors, state: stateFile.state };
}

/**
 * Deletes all but the newest `keep` complete checkpoints, and any incomplete checkpoint older
 * than the newest complete one (a writer that died part way).
 */
export async function pruneCheckpoints(store: ObjectStore, keep: number, folder = CHECKPOINTS_PREFIX): Promise<string[]> {
  checkFolder(folder);
  const complete = (await listPublished(store, folder)).map((entry) => entry.prefix);
  const newest = complete.at(-1);
  const kept = new Set(complete.slice(Math.max(0, complete.length - Math.max(1, keep))));
  const byPrefix = new Map<string, string[]>();
  for await (const object of store.list(`${folder}/`)) {
    const prefix = object.key.split("/").slice(0, 2).join("/");
    byPrefix.set(prefix, [...(byPrefix.get(prefix) ?? []), object.key]);
  }
  const removed: string[] = [];
  for (const [prefix, keys] of byPrefix) {
    if (kept.has(prefix)) continue;
    const isComplete = complete.includes(prefix);
    if (!isComplete && (!newest || prefix > newest)) continue;
    // The manifest goes first, so a crash part way leaves an incomplete folder, never a corrupt complete one.
    keys.sort((a, b) => Number(b.endsWith("manifest.json")) - Number(a.endsWith("manifest.json")));
    for (const key of keys) await store.delete([key]);
    removed.push(prefix);
  }
  return removed;
}

function checkFolder(folder: string): string {
  if (folder === "" || folder.includes("/")) throw new Error(`checkpoint folder must be one path segment, got ${JSON.stringify(folder)}`);
  return folder;
}
