import * as tf from "@tensorflow/tfjs-core";
import "./gradients.ts";

/** What the FineTuneJob's `trainer.backend` asks for. */
export type BackendPreference = "auto" | "gpu" | "cpu";

/** The tfjs backend in use, as recorded in logs and training_metrics.json. */
export type BackendName = "tensorflow" | "wasm" | "cpu";

/** Thrown when the requested backend cannot start; the message says what to install or change. */
export class BackendError extends Error {
  override name = "BackendError";
}

// A variable keeps TypeScript from resolving a package that is optional and absent here.
const NODE_GPU_PACKAGE = "@tensorflow/tfjs-node-gpu";

/**
 * Chooses and initialises the tfjs backend, fastest first:
 * - "tensorflow" from @tensorflow/tfjs-node-gpu (native TensorFlow; CUDA where a GPU is present),
 *   installed only in the GPU image;
 * - "wasm" (SIMD, one thread in Node), about 28 times faster than "cpu" on matMul here;
 * - "cpu", plain JavaScript, the last resort.
 * "gpu" insists on tfjs-node-gpu; "cpu" never loads it.
 */
export async function selectBackend(preference: BackendPreference = "auto"): Promise<BackendName> {
  if (preference !== "cpu") {
    const failure = await tryNodeGpu();
    if (failure === undefined) return "tensorflow";
    if (preference === "gpu") {
      throw new BackendError(
        `trainer.backend is "gpu" but ${NODE_GPU_PACKAGE} could not be loaded (${failure}); ` +
          'use the GPU trainer image, or set trainer.backend to "auto" or "cpu"',
      );
    }
  }
  if (await withoutNewProcessHandlers(() => trySetBackend("wasm", () => import("@tensorflow/tfjs-backend-wasm")))) return "wasm";
  if (await trySetBackend("cpu", () => import("@tensorflow/tfjs-backend-cpu"))) return "cpu";
  throw new BackendError("no tfjs backend could start: neither wasm nor cpu initialised");
}

/** Loads tfjs-node-gpu and switches to its backend; returns why not, or undefined on success. */
async function tryNodeGpu(): Promise<string | undefined> {
  try {
    // tfjs-node-gpu registers "tensorflow" on the tfjs-core instance it imports; npm dedupes it
    // with ours when the versions match (4.22.0 both), which is what makes this work.
    await import(NODE_GPU_PACKAGE);
  } catch (error) {
    return `not installed or failed to load: ${(error as Error).message.split("\n")[0]}`;
  }
  if (!tf.findBackendFactory("tensorflow")) {
    return `it loaded but registered no "tensorflow" backend with this @tensorflow/tfjs-core (version mismatch?)`;
  }
  return (await tf.setBackend("tensorflow")) ? undefined : `the "tensorflow" backend failed to initialise`;
}

async function trySetBackend(name: BackendName, load: () => Promise<unknown>): Promise<boolean> {
  try {
    await load();
    return await tf.setBackend(name);
  } catch {
    return false;
  }
}

/**
 * Runs `start`, then removes any uncaughtException / unhandledRejection listeners it added.
 * The wasm backend's Emscripten glue installs listeners that rethrow every error from inside
 * themselves, so any later crash would print a line of minified glue code instead of the error.
 */
async function withoutNewProcessHandlers<T>(start: () => Promise<T>): Promise<T> {
  const exceptionListeners = new Set(process.listeners("uncaughtException"));
  const rejectionListeners = new Set(process.listeners("unhandledRejection"));
  try {
    return await start();
  } finally {
    for (const listener of process.listeners("uncaughtException")) {
      if (!exceptionListeners.has(listener)) process.removeListener("uncaughtException", listener);
    }
    for (const listener of process.listeners("unhandledRejection")) {
      if (!rejectionListeners.has(listener)) process.removeListener("unhandledRejection", listener);
    }
  }
}
