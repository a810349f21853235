import { joinKey, StorageError, type ObjectStore } from "../../storage/object-store.ts";
import { MANIFEST_FILE, publish, readManifest, readPublishedFile } from "../../storage/publish.ts";

/**
 * The checkpoint format. A checkpoint is a published folder (data first, manifest last; see
 * storage/publish.ts) under `checkpoints/step-<8 digits>-<owner>/` holding:
 * - `tensors.bin`: every saved tensor as raw little-endian float32, back to back;
 * - `state.json`: the tensor index (name, shape, byte offset) and the training state (step,
 *   data position, RNG states, metrics so far) that the loop needs to continue exactly.
 * Raw float32 keeps resume bit-exact; the loop decides what goes in (adapter weights and
 * optimizer moments).
 *
 * The owner is the identity of the job that wrote the checkpoint (a hash of its settings, of
 * its inputs' contents and of its output's location). It is in the folder's name, so that jobs
 * sharing a folder never write the same keys, and in the manifest. A job reads and deletes its
 * own checkpoints only: anything else in the folder (other jobs' checkpoints, a model, a
 * person's files) is never touched.
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

/**
 * Whose checkpoints, and where: `folder` is the store's folder that holds them, "checkpoints"
 * unless a job's checkpoint.uri names another; it is a single path segment, never the store's
 * root. `owner` is lowercase letters and digits.
 */
export interface CheckpointOwner {
  owner: string;
  folder?: string;
}

/** What a search of the folder found for one owner. */
export interface CheckpointSearch<State> {
  /** The owner's newest checkpoint that reads back intact, if any. */
  checkpoint: (Checkpoint<State> & { prefix: string }) | undefined;
  /** The owner's complete checkpoints newer than that one that could not be read, newest first, and why. */
  unreadable: { prefix: string; problem: string }[];
  /** Complete checkpoints of other owners in the folder (other jobs, or this job with other settings or data), left alone. */
  foreign: string[];
}

interface StateFile<State> {
  format: "kubetune-checkpoint/v1";
  step: number;
  tensors: { name: string; shape: number[]; offset: number; length: number }[];
  state: State;
}

const CHECKPOINT_NAME = /^step-(\d{8})-([a-z0-9]+)$/;

export function checkpointPrefix(step: number, owner: string, folder = CHECKPOINTS_PREFIX): string {
  return joinKey(checkFolder(folder), `step-${String(step).padStart(8, "0")}-${checkOwner(owner)}`);
}

/** Saves a checkpoint atomically and returns its prefix in the store. */
export async function saveCheckpoint<State>(store: ObjectStore, checkpoint: Checkpoint<State>, where: CheckpointOwner): Promise<string> {
  const prefix = checkpointPrefix(checkpoint.step, where.owner, where.folder);
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
  await publish(store, prefix, { "tensors.bin": bytes, "state.json": JSON.stringify(stateFile) }, { step: checkpoint.step, owner: where.owner });
  return prefix;
}

/**
 * The owner's newest complete checkpoint that reads back intact. Half-written ones (no
 * manifest) are ignored; a complete one whose files are missing, altered or unparsable is
 * passed over for the one before it and listed in `unreadable`. A store that cannot be
 * reached is an error, not a reason to fall back.
 */
export async function loadLatestCheckpoint<State>(store: ObjectStore, where: CheckpointOwner): Promise<CheckpointSearch<State>> {
  const owner = checkOwner(where.owner);
  const complete = listing(await foldersIn(store, where.folder)).filter((entry) => entry.complete);
  const foreign = complete.filter((entry) => entry.owner !== owner).map((entry) => entry.prefix);
  const unreadable: CheckpointSearch<State>["unreadable"] = [];
  for (const entry of complete.filter((entry) => entry.owner === owner).reverse()) {
    try {
      const checkpoint = await readCheckpoint<State>(store, entry.prefix, owner);
      return { checkpoint: { prefix: entry.prefix, ...checkpoint }, unreadable, foreign };
    } catch (error) {
      if (!isUnreadable(error)) throw error;
      unreadable.push({ prefix: entry.prefix, problem: (error as Error).message });
    }
  }
  return { checkpoint: undefined, unreadable, foreign };
}

/**
 * Deletes the owner's checkpoints but the newest `keep` complete ones up to `newest` (the step
 * just saved), its incomplete leftovers (a writer that died part way), and any newer than
 * `newest`: those were written by an attempt that was not resumed from (they were unreadable),
 * and this run redoes their steps. Returns the prefixes deleted.
 */
export async function pruneCheckpoints(store: ObjectStore, options: CheckpointOwner & { keep: number; newest: number }): Promise<string[]> {
  const { keep, newest } = options;
  const owner = checkOwner(options.owner);
  const own = listing(await foldersIn(store, options.folder)).filter((entry) => entry.owner === owner);
  const kept = new Set(
    own
      .filter((entry) => entry.complete && entry.step <= newest)
      .slice(-Math.max(1, keep))
      .map((entry) => entry.prefix),
  );
  const removed: string[] = [];
  for (const entry of own) {
    if (kept.has(entry.prefix) || (!entry.complete && entry.step === newest)) continue;
    // The manifest goes first, so a crash part way leaves an incomplete folder, never a corrupt complete one.
    const manifest = joinKey(entry.prefix, MANIFEST_FILE);
    if (entry.keys.includes(manifest)) await store.delete([manifest]);
    await store.delete(entry.keys.filter((key) => key !== manifest));
    removed.push(entry.prefix);
  }
  return removed;
}

async function readCheckpoint<State>(store: ObjectStore, prefix: string, owner: string): Promise<Checkpoint<State>> {
  const where = `${store.uri.replace(/\/+$/, "")}/${prefix}`;
  const manifest = await readManifest(store, prefix);
  if (!manifest) throw new StorageError("NotFound", `${where}/${MANIFEST_FILE}`, "the manifest disappeared while reading");
  if (manifest.metadata?.owner !== owner) {
    throw new StorageError("Corrupt", `${where}/${MANIFEST_FILE}`, `names owner ${JSON.stringify(manifest.metadata?.owner)}, not ${JSON.stringify(owner)}`);
  }
  let stateFile: StateFile<State>;
  try {
    stateFile = JSON.parse((await readPublishedFile(store, prefix, manifest, "state.json")).toString("utf8")) as StateFile<State>;
  } catch (error) {
    if (error instanceof SyntaxError) throw new StorageError("Corrupt", `${where}/state.json`, `is not valid JSON (${error.message})`, { cause: error });
    throw error;
  }
  if (stateFile.format !== "kubetune-checkpoint/v1") {
    throw new StorageError("Corrupt", `${where}/state.json`, `unknown checkpoint format ${JSON.stringify(stateFile.format)}`);
  }
  const bytes = await readPublishedFile(store, prefix, manifest, "tensors.bin");
  const tensors: Record<string, SavedTensor> = {};
  for (const entry of stateFile.tensors) {
    if (entry.offset + entry.length * 4 > bytes.length) {
      throw new StorageError("Corrupt", `${where}/tensors.bin`, `tensor ${entry.name} lies past the end of the file`);
    }
    // Copy out: the slice must be 4-byte aligned and must not alias the download buffer.
    const data = new Float32Array(entry.length);
    Buffer.from(data.buffer).set(bytes.subarray(entry.offset, entry.offset + entry.length * 4));
    tensors[entry.name] = { shape: entry.shape, data };
  }
  return { step: stateFile.step, tensors, state: stateFile.state };
}

/** A checkpoint that is there but cannot be used, as opposed to a store that cannot be reached. */
function isUnreadable(error: unknown): boolean {
  return error instanceof StorageError && (error.code === "Corrupt" || error.code === "NotFound");
}

interface FolderEntry {
  prefix: string;
  step: number;
  owner: string;
  complete: boolean;
  keys: string[];
}

/** The keys under the folder, grouped by the folder entry (its first path segment) they are in. */
async function foldersIn(store: ObjectStore, folder = CHECKPOINTS_PREFIX): Promise<Map<string, string[]>> {
  const base = `${checkFolder(folder)}/`;
  const byPrefix = new Map<string, string[]>();
  for await (const object of store.list(base)) {
    const name = object.key.slice(base.length).split("/")[0]!;
    const prefix = base + name;
    byPrefix.set(prefix, [...(byPrefix.get(prefix) ?? []), object.key]);
  }
  return byPrefix;
}

/** The entries named like checkpoints, by step (oldest first); every other entry is left out. */
function listing(byPrefix: Map<string, string[]>): FolderEntry[] {
  const entries: FolderEntry[] = [];
  for (const [prefix, keys] of byPrefix) {
    const match = CHECKPOINT_NAME.exec(prefix.slice(prefix.indexOf("/") + 1));
    if (!match) continue;
    entries.push({ prefix, step: Number(match[1]), owner: match[2]!, complete: keys.includes(joinKey(prefix, MANIFEST_FILE)), keys });
  }
  return entries.sort((a, b) => a.step - b.step || (a.prefix < b.prefix ? -1 : 1));
}

function checkFolder(folder: string): string {
  if (folder === "" || folder.includes("/")) throw new Error(`checkpoint folder must be one path segment, got ${JSON.stringify(folder)}`);
  return folder;
}

function checkOwner(owner: string): string {
  if (!/^[a-z0-9]+$/.test(owner)) throw new Error(`checkpoint owner must be lowercase letters and digits, got ${JSON.stringify(owner)}`);
  return owner;
}
