import { spawnSync } from "node:child_process";
import { lstatSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { cgroupCpuLimit, cpuThreads, findNativeBuild } from "./backend.ts";

const root = path.resolve(import.meta.dirname, "../..");

/** selectBackend in a fresh process (a process chooses its backend once), with extra environment. */
function select(preference: string, env: NodeJS.ProcessEnv = {}, gpus = 0): Record<string, unknown> {
  const run = spawnSync(process.execPath, ["--import", "tsx", "trainer/testing/print-backend.ts", preference, String(gpus)], {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, KUBETUNE_BACKEND: "", KUBETUNE_THREADS: "", TF_NUM_INTRAOP_THREADS: undefined, ...env },
    timeout: 60_000,
  });
  const line = run.stdout.trim().split("\n").at(-1);
  if (!line?.startsWith("{")) throw new Error(`print-backend printed no JSON (exit ${run.status}): ${run.stderr}`);
  return JSON.parse(line) as Record<string, unknown>;
}

const files = (contents: Record<string, string>) => (file: string) => contents[file];

describe("the CPU threads a trainer computes with", () => {
  it("follow a cgroup v2 limit, rounded up to whole CPUs", () => {
    expect(cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu.max": "150000 100000\n" }))).toBe(2);
    expect(cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu.max": "max 100000\n" }))).toBeUndefined();
  });

  it("follow a cgroup v1 CFS quota, and no quota (-1) means no limit", () => {
    expect(cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "400000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000" }))).toBe(4);
    expect(cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000" }))).toBeUndefined();
  });

  it("never exceed the CPUs the machine has, and KUBETUNE_THREADS overrides both", () => {
    expect(cpuThreads({}, files({ "/sys/fs/cgroup/cpu.max": "100000 100000" }))).toBe(1);
    expect(cpuThreads({}, files({ "/sys/fs/cgroup/cpu.max": "6400000 100000" }))).toBeLessThanOrEqual(64);
    expect(cpuThreads({ KUBETUNE_THREADS: "3" }, files({ "/sys/fs/cgroup/cpu.max": "100000 100000" }))).toBe(3);
  });
});

describe("selectBackend", () => {
  it("uses wasm when told to, and says why", () => {
    expect(select("auto", { KUBETUNE_BACKEND: "wasm" })).toMatchObject({ name: "wasm", device: "cpu", threads: 1, reason: expect.stringContaining("KUBETUNE_BACKEND=wasm") });
  });

  it("refuses an unknown KUBETUNE_BACKEND by name", () => {
    expect(select("auto", { KUBETUNE_BACKEND: "cuda" })).toMatchObject({ error: "BackendError", message: expect.stringContaining('KUBETUNE_BACKEND is "cuda"') });
  });

  // `npm run native` has run wherever the full suite runs (.ci/run builds it); without it the
  // trainer falls back to wasm, which the next case checks instead.
  const native = findNativeBuild();
  it.runIf(native?.flavor === "cpu")("picks native TensorFlow on the CPU under auto and cpu, with intra-op threads from the pod's CPUs", () => {
    for (const preference of ["auto", "cpu"]) {
      expect(select(preference, { KUBETUNE_THREADS: "1" })).toMatchObject({
        name: "tensorflow",
        device: "cpu",
        threads: 1,
        description: "1 CPU thread",
        intraOpThreads: "1",
        reason: expect.stringContaining("CPU build of TensorFlow (tensorflow-cpu=="),
      });
    }
  });

  it.runIf(native?.flavor === "cpu")("says so when a job asked for GPUs but the image has only the CPU build", () => {
    expect(select("auto", {}, 1)).toMatchObject({ name: "tensorflow", device: "cpu", reason: expect.stringMatching(/resources\.gpus is 1 but this is not the GPU build \(use the trainer-gpu image\)/) });
  });

  it.runIf(native?.flavor === "cpu")('fails "gpu" with the reason, instead of falling back to the CPU build', () => {
    expect(select("gpu", {}, 1)).toMatchObject({ error: "BackendError", message: expect.stringMatching(/trainer\.backend is "gpu" but the native build is the CPU one .*npm run native -- --gpu/) });
  });

  // The dev cluster's pod runner starts trainers as their pod's runAsUser; a build linked from
  // root's cache is then out of reach, and the reason must say so rather than "not built".
  const linkedFromElsewhere = native !== undefined && lstatSync(path.join(native.packageDir, "deps")).isSymbolicLink();
  it.runIf(process.getuid?.() === 0 && linkedFromElsewhere && !canRead(native?.packageDir, 65532))("says the native build is unreadable, not missing, for a user who cannot read it", () => {
    const run = spawnSync("setpriv", ["--reuid=65532", "--regid=65532", "--clear-groups", process.execPath, "--import", "tsx", "trainer/testing/print-backend.ts", "auto"], {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, KUBETUNE_BACKEND: "", HOME: "/tmp" },
      timeout: 60_000,
    });
    expect(JSON.parse(run.stdout.trim().split("\n").at(-1)!)).toMatchObject({
      name: "wasm",
      reason: expect.stringMatching(/native TensorFlow backend is built but .* is not readable by this user \(uid 65532\); run npm run native -- --copy/),
    });
  });

  it.runIf(native === undefined)("falls back to wasm without a native build, and fails gpu with what to run", () => {
    expect(select("auto")).toMatchObject({ name: "wasm", reason: expect.stringContaining("npm run native") });
    expect(select("gpu", {}, 1)).toMatchObject({ error: "BackendError", message: expect.stringContaining("npm run native -- --gpu") });
  });
});

/** Whether uid can read the native build's marker (run as that uid: permissions along the whole path count). */
function canRead(packageDir: string | undefined, uid: number): boolean {
  if (!packageDir) return false;
  const marker = path.join(packageDir, "deps", "kubetune-native.json");
  return spawnSync("setpriv", [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "test", "-r", marker]).status === 0;
}
