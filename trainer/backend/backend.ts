import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import * as tf from "@tensorflow/tfjs-core";
import "./gradients.ts";

/** What the FineTuneJob's `trainer.backend` asks for. */
export type BackendPreference = "auto" | "gpu" | "cpu";

/** The tfjs backend in use, as recorded in logs, training_metrics.json and status. */
export type BackendName = "tensorflow" | "wasm" | "cpu";

/** The backend a trainer runs on, where, and why it was chosen: logged first, and reported. */
export interface BackendInfo {
  name: BackendName;
  device: "gpu" | "cpu";
  /** "NVIDIA H200, 139.8 GiB" or "2 CPU threads". */
  description: string;
  /** CPU threads TensorFlow or wasm computes with (0 on a GPU). */
  threads: number;
  /** Why this backend: what was asked, what is present, what was missing. */
  reason: string;
}

/** Thrown when the requested backend cannot start; the message says what to install or change. */
export class BackendError extends Error {
  override name = "BackendError";
}

export interface SelectOptions {
  /** GPUs the job asked for (resources.gpus): under "auto" a job with GPUs expects one. */
  gpusRequested?: number;
  /** The environment to read KUBETUNE_BACKEND, KUBETUNE_THREADS and TF_* from; process.env by default. */
  env?: NodeJS.ProcessEnv;
}

const NATIVE_PACKAGE = "@tensorflow/tfjs-node";

/** What `npm run native` installed into node_modules/@tensorflow/tfjs-node (deps/kubetune-native.json). */
export interface NativeBuild {
  flavor: "cpu" | "gpu";
  tensorflow: string;
  packageDir: string;
}

let selected: BackendInfo | undefined;

/**
 * Chooses and initialises the tfjs backend, once per process, and says why:
 * - "gpu": TensorFlow on a GPU, or a BackendError naming what is missing (never a silent fallback);
 * - "auto": TensorFlow on the GPU when the GPU build is installed and a GPU is usable, else
 *   TensorFlow on the CPU when a native build is installed, else wasm;
 * - "cpu": TensorFlow on the CPU when a native build is installed (a GPU build hides its GPUs),
 *   else wasm.
 * wasm is about 28 times faster than tfjs's plain-JavaScript "cpu" backend, which is the last
 * resort. KUBETUNE_BACKEND=tensorflow|wasm forces one (tests and benchmarks compare them).
 */
export async function selectBackend(preference: BackendPreference = "auto", options: SelectOptions = {}): Promise<BackendInfo> {
  if (selected) return selected;
  const env = options.env ?? process.env;
  const forced = env.KUBETUNE_BACKEND;
  if (forced !== undefined && forced !== "" && forced !== "tensorflow" && forced !== "wasm") {
    throw new BackendError(`KUBETUNE_BACKEND is "${forced}"; use tensorflow or wasm, or unset it`);
  }
  const threads = cpuThreads(env);
  const native = forced === "wasm" ? undefined : findNativeBuild();

  if (forced === "tensorflow" && !native) throw new BackendError(`KUBETUNE_BACKEND is "tensorflow" but ${nativeMissing()}`);
  if (preference === "gpu") {
    if (!native) throw new BackendError(`trainer.backend is "gpu" but ${nativeMissing()}; use the trainer-gpu image or run npm run native -- --gpu`);
    if (native.flavor !== "gpu") {
      throw new BackendError(`trainer.backend is "gpu" but the native build is the CPU one (${native.tensorflow}); use the trainer-gpu image or run npm run native -- --gpu`);
    }
  }

  if (native) {
    const wantGpu = preference !== "cpu" && native.flavor === "gpu";
    const started = await startNative(native, threads, wantGpu, env);
    if (preference === "gpu" && started.device !== "gpu") throw new BackendError(`trainer.backend is "gpu" but ${started.noGpu}`);
    const asked = options.gpusRequested ?? 0;
    const build = `the ${native.flavor === "gpu" ? "GPU" : "CPU"} build of TensorFlow (${native.tensorflow})`;
    const why =
      started.device === "gpu"
        ? `trainer.backend ${preference}: ${build} found a GPU`
        : preference === "cpu"
          ? `trainer.backend cpu: ${build} computes on the CPU` + (native.flavor === "gpu" ? " (GPUs hidden)" : "")
          : native.flavor === "gpu"
            ? `trainer.backend ${preference}: ${build} is installed but ${started.noGpu}; computing on the CPU` + (asked > 0 ? ` although resources.gpus is ${asked}` : "")
            : `trainer.backend ${preference}: ${build} is installed` + (asked > 0 ? `; resources.gpus is ${asked} but this is not the GPU build (use the trainer-gpu image)` : "");
    selected = { ...started.info, reason: why };
    return selected;
  }

  const missing = forced === "wasm" ? "KUBETUNE_BACKEND=wasm" : nativeMissing();
  if (await withoutNewProcessHandlers(() => trySetBackend("wasm", () => import("@tensorflow/tfjs-backend-wasm")))) {
    selected = { name: "wasm", device: "cpu", description: "1 CPU thread (wasm)", threads: 1, reason: `trainer.backend ${preference}: ${missing}; wasm is the fastest backend present` };
    return selected;
  }
  if (await trySetBackend("cpu", () => import("@tensorflow/tfjs-backend-cpu"))) {
    selected = { name: "cpu", device: "cpu", description: "1 CPU thread (JavaScript)", threads: 1, reason: `trainer.backend ${preference}: ${missing}, and wasm did not start` };
    return selected;
  }
  throw new BackendError("no tfjs backend could start: neither wasm nor cpu initialised");
}

/** The backend selectBackend chose in this process, if it ran. */
export function currentBackend(): BackendInfo | undefined {
  return selected;
}

/** Why no native build is usable: not built, or built where this user cannot read it. */
function nativeMissing(): string {
  const marker = nativeMarkerPath();
  if (marker) {
    try {
      fs.accessSync(marker, fs.constants.R_OK);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EACCES" || code === "EPERM") {
        const deps = path.dirname(marker);
        const where = fs.lstatSync(deps).isSymbolicLink() ? fs.readlinkSync(deps) : deps;
        return `the native TensorFlow backend is built but ${where} is not readable by this user (uid ${process.getuid?.() ?? "?"}); run npm run native -- --copy to put it under node_modules`;
      }
    }
  }
  return "the native TensorFlow backend is not built (npm run native)";
}

function nativeMarkerPath(): string | undefined {
  try {
    return path.join(path.dirname(createRequire(import.meta.url).resolve(`${NATIVE_PACKAGE}/package.json`)), "deps", "kubetune-native.json");
  } catch {
    return undefined;
  }
}

/** The native build linked into node_modules, or undefined when `npm run native` has not run. */
export function findNativeBuild(): NativeBuild | undefined {
  const markerPath = nativeMarkerPath();
  if (!markerPath) return undefined;
  const packageDir = path.dirname(path.dirname(markerPath));
  try {
    const marker = JSON.parse(fs.readFileSync(markerPath, "utf8")) as { flavor?: string; tensorflow?: string };
    if (marker.flavor !== "cpu" && marker.flavor !== "gpu") return undefined;
    return { flavor: marker.flavor, tensorflow: marker.tensorflow ?? "unknown", packageDir };
  } catch {
    return undefined;
  }
}

/**
 * CPU threads to compute with: KUBETUNE_THREADS if set, else the container's CPU limit (cgroup
 * v2 cpu.max or v1 cfs quota, rounded up), else os.availableParallelism().
 */
export function cpuThreads(env: NodeJS.ProcessEnv = process.env, readFile: (file: string) => string | undefined = readIfPresent): number {
  const override = Number(env.KUBETUNE_THREADS);
  if (Number.isInteger(override) && override > 0) return override;
  const available = os.availableParallelism();
  const limit = cgroupCpuLimit(readFile);
  return Math.max(1, Math.min(available, limit ?? available));
}

/** The CPU limit of this process's cgroup in whole CPUs (rounded up), or undefined when unlimited. */
export function cgroupCpuLimit(readFile: (file: string) => string | undefined = readIfPresent): number | undefined {
  const v2 = readFile("/sys/fs/cgroup/cpu.max")?.trim().split(/\s+/);
  if (v2 && v2[0] !== "max" && v2.length === 2) {
    const [quota, period] = v2.map(Number) as [number, number];
    if (quota > 0 && period > 0) return Math.ceil(quota / period);
  }
  const quota = Number(readFile("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"));
  const period = Number(readFile("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
  if (quota > 0 && period > 0) return Math.ceil(quota / period);
  return undefined;
}

function readIfPresent(file: string): string | undefined {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

interface NativeStart {
  info: Omit<BackendInfo, "reason">;
  device: "gpu" | "cpu";
  /** Why no GPU is in use, when none is. */
  noGpu: string;
}

/**
 * Loads the binding and switches to TensorFlow. TensorFlow reads its thread counts and device
 * visibility from the environment when the binding creates its context, so they are set first:
 * intra-op threads follow the pod's CPUs; inter-op is 1, since the trainer issues one op at a
 * time and a second pool only competes for the same cores.
 */
async function startNative(native: NativeBuild, threads: number, wantGpu: boolean, env: NodeJS.ProcessEnv): Promise<NativeStart> {
  env.TF_NUM_INTRAOP_THREADS ??= String(threads);
  env.TF_NUM_INTEROP_THREADS ??= "1";
  // INFO lines (CPU feature banners) are noise in a trainer's log; warnings and errors stay.
  env.TF_CPP_MIN_LOG_LEVEL ??= "1";
  // oneDNN's kernels are TensorFlow's default on x86; saying so explicitly also keeps TensorFlow
  // from logging a banner about it before the trainer's own first line.
  env.TF_ENABLE_ONEDNN_OPTS ??= "1";
  if (!wantGpu && native.flavor === "gpu") env.CUDA_VISIBLE_DEVICES = "-1";
  try {
    await import(NATIVE_PACKAGE);
  } catch (error) {
    throw new BackendError(`the native TensorFlow backend is built but does not load: ${(error as Error).message.split("\n")[0]}; run npm run native again`);
  }
  if (!tf.findBackendFactory("tensorflow")) {
    throw new BackendError(`${NATIVE_PACKAGE} loaded but registered no "tensorflow" backend with this @tensorflow/tfjs-core (two copies of tfjs-core?)`);
  }
  if (!(await tf.setBackend("tensorflow"))) throw new BackendError(`the "tensorflow" backend failed to initialise`);
  // NodeJSKernelBackend asks the binding once, when TensorFlow creates its eager context.
  const onGpu = wantGpu && (tf.backend() as unknown as { isUsingGpuDevice?: boolean }).isUsingGpuDevice === true;
  if (onGpu) {
    return { info: { name: "tensorflow", device: "gpu", description: describeGpu(), threads: 0 }, device: "gpu", noGpu: "" };
  }
  const noGpu = !wantGpu ? "the GPU is hidden for a CPU job" : whyNoGpu();
  return { info: { name: "tensorflow", device: "cpu", description: `${threads} CPU thread${threads === 1 ? "" : "s"}`, threads }, device: "cpu", noGpu };
}

/** Why TensorFlow's GPU build found no GPU, in words a user can act on. */
function whyNoGpu(): string {
  if (!fs.existsSync("/proc/driver/nvidia/version")) {
    return "no NVIDIA driver was found on this machine (/proc/driver/nvidia/version is missing); schedule the pod on a GPU node with resources.gpus";
  }
  if (process.env.CUDA_VISIBLE_DEVICES !== undefined && /^(|-1|none)$/i.test(process.env.CUDA_VISIBLE_DEVICES)) {
    return `CUDA_VISIBLE_DEVICES="${process.env.CUDA_VISIBLE_DEVICES}" hides every GPU`;
  }
  return "the NVIDIA driver is loaded but TensorFlow found no usable GPU (see TensorFlow's log lines above; is a GPU allocated to this container?)";
}

/** "NVIDIA H200, 139.8 GiB", from nvidia-smi when the container has it, else the driver's /proc entry. */
function describeGpu(): string {
  try {
    const line = execFileSync("nvidia-smi", ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"], { encoding: "utf8", timeout: 5000 })
      .split("\n")[0]!
      .split(",")
      .map((part) => part.trim());
    const mib = Number(line[1]);
    if (line[0]) return `${line[0]}${Number.isFinite(mib) ? `, ${(mib / 1024).toFixed(1)} GiB` : ""}`;
  } catch {
    // No nvidia-smi in this container: fall back to the driver's own description.
  }
  try {
    const gpus = fs.readdirSync("/proc/driver/nvidia/gpus");
    const model = fs.readFileSync(path.join("/proc/driver/nvidia/gpus", gpus[0]!, "information"), "utf8").match(/^Model:\s*(.+)$/m)?.[1];
    if (model) return model.trim();
  } catch {
    // Not readable either; say what is known.
  }
  return "an NVIDIA GPU";
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
