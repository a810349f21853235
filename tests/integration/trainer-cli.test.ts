import { spawn } from "node:child_process";
import { readdir, readFile, rm, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { findNativeBuild } from "../../trainer/backend/backend.ts";
import { readSafetensors } from "../../trainer/safetensors/safetensors.ts";
import { writeTinyJob, type TinyJob } from "../../trainer/testing/tiny-job.ts";
import { cluster, s3Store } from "./harness.ts";

/**
 * `kubetune run` and `kubetune train` as a user and the trainer pod run them: real child
 * processes, killed with real signals, reading real files and a real S3 server (MinIO).
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const CLI = path.join(repoRoot, "bin/kubetune.mjs");

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  events: Array<Record<string, unknown>>;
}

/** Runs the CLI; `onEvent` sees each JSON line as it arrives and may signal the process. */
function kubetune(args: string[], options: { env?: NodeJS.ProcessEnv; onEvent?: (event: Record<string, unknown>, kill: (signal: NodeJS.Signals) => void) => void } = {}): Promise<Finished> {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: repoRoot, env: { ...process.env, ...options.env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  let pending = "";
  const events: Array<Record<string, unknown>> = [];
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith("{")) continue;
      const event = JSON.parse(line) as Record<string, unknown>;
      events.push(event);
      options.onEvent?.(event, (signal) => child.kill(signal));
    }
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  return new Promise((resolve) => child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr, events })));
}

const jobs: TinyJob[] = [];
async function tinyJob(spec: Partial<FineTuneJob["spec"]> = {}, lines?: unknown[]): Promise<TinyJob> {
  const job = await writeTinyJob({ spec, ...(lines ? { lines } : {}) });
  jobs.push(job);
  return job;
}
afterAll(async () => {
  for (const job of jobs) await rm(job.dir, { recursive: true, force: true });
});

const adapterBytes = (job: TinyJob) => readFile(path.join(job.dir, "out", "adapter_model.safetensors"));
const stepsOf = (finished: Finished) => finished.events.filter((event) => event.event === "step").map((event) => event.step as number);

/** Dropout, accumulation, eval and warmup: everything whose state a resume must restore. */
const RESUMABLE: Partial<FineTuneJob["spec"]> = {
  dataset: { train: "data/train.jsonl", format: "text", maxSeqLength: 32, evalFraction: 0.2 },
  method: { type: "lora", lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj", "up_proj"] } },
  hyperparameters: { maxSteps: 14, batchSize: 2, gradientAccumulation: 2, learningRate: 0.01, warmupSteps: 3, scheduler: "cosine", evalEverySteps: 4, seed: 3 },
  checkpoint: { everySteps: 5, keep: 2 },
};

// Every backend present: wasm always, native TensorFlow where `npm run native` built it (CI does).
const BACKENDS = findNativeBuild() ? ["wasm", "tensorflow"] : ["wasm"];

describe.each(BACKENDS)("kubetune run on %s: interruption and resume", (backend) => {
  const env = { KUBETUNE_BACKEND: backend };
  let reference: Buffer;

  beforeAll(async () => {
    const job = await tinyJob(RESUMABLE);
    const finished = await kubetune(["run", job.manifestPath, "--json"], { env });
    expect(finished.code, finished.stderr).toBe(0);
    expect(finished.events[0]).toMatchObject({ event: "backend", name: backend });
    expect(stepsOf(finished)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    reference = await adapterBytes(job);
  });

  it("after SIGKILL between checkpoints, a restart resumes and writes the same adapter byte for byte", async () => {
    const job = await tinyJob(RESUMABLE);
    const killed = await kubetune(["run", job.manifestPath, "--json"], {
      env,
      onEvent: (event, kill) => event.event === "step" && event.step === 6 && kill("SIGKILL"),
    });
    expect(killed.signal).toBe("SIGKILL");
    // Killed after the checkpoint of step 5 and before that of step 10, with no output written.
    expect(Math.max(...stepsOf(killed))).toBeLessThan(10);
    expect(killed.events.filter((event) => event.event === "checkpoint").map((event) => event.step)).toEqual([5]);
    expect(await readdir(path.join(job.dir, "out"))).toEqual(["checkpoints"]);

    const resumed = await kubetune(["run", job.manifestPath, "--json"], { env });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.events.find((event) => event.event === "start")).toMatchObject({ event: "start", step: 5, resumedFrom: expect.stringMatching(/\/out\/checkpoints\/step-00000005-[a-z0-9]+$/) });
    expect(stepsOf(resumed)).toEqual([6, 7, 8, 9, 10, 11, 12, 13, 14]);
    expect((await adapterBytes(job)).equals(reference)).toBe(true);
  });

  it("on SIGTERM finishes the step, saves a checkpoint, exits 75 with a clear message, and resumes to the same adapter", async () => {
    const job = await tinyJob(RESUMABLE);
    const stopped = await kubetune(["run", job.manifestPath, "--json"], {
      env,
      onEvent: (event, kill) => event.event === "step" && event.step === 2 && kill("SIGTERM"),
    });
    expect(stopped.code).toBe(75);
    const stop = stopped.events.find((event) => event.event === "stopped")!;
    expect(stop).toMatchObject({ signal: "SIGTERM", totalSteps: 14, checkpoint: expect.stringMatching(/step-0000000\d-[a-z0-9]+$/) });
    expect(stopped.events.at(-2)).toMatchObject({ event: "checkpoint", reason: "stop", step: stop.step });
    expect(stopped.stderr).toMatch(
      new RegExp(`stopped by SIGTERM after step ${stop.step}/14; checkpoint saved to file://.*/out/checkpoints/step-0000000${stop.step}-[a-z0-9]+; run the same command again to resume`),
    );

    const resumed = await kubetune(["run", job.manifestPath, "--json"], { env });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.events.find((event) => event.event === "start")).toMatchObject({ event: "start", step: stop.step });
    expect((await adapterBytes(job)).equals(reference)).toBe(true);
  });
});

describe.runIf(BACKENDS.length > 1)("kubetune run: a checkpoint from one backend resumes on the other", () => {
  it("wasm stopped by SIGTERM, resumed on TensorFlow, ends close to an uninterrupted wasm run", async () => {
    const uninterrupted = await tinyJob(RESUMABLE);
    expect((await kubetune(["run", uninterrupted.manifestPath, "--json"], { env: { KUBETUNE_BACKEND: "wasm" } })).code).toBe(0);

    const job = await tinyJob(RESUMABLE);
    const stopped = await kubetune(["run", job.manifestPath, "--json"], {
      env: { KUBETUNE_BACKEND: "wasm" },
      onEvent: (event, kill) => event.event === "step" && event.step === 6 && kill("SIGTERM"),
    });
    expect(stopped.code).toBe(75);
    const resumed = await kubetune(["run", job.manifestPath, "--json"], { env: { KUBETUNE_BACKEND: "tensorflow" } });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.events[0]).toMatchObject({ event: "backend", name: "tensorflow" });
    expect(resumed.events.find((event) => event.event === "start")).toMatchObject({ step: expect.any(Number), resumedFrom: expect.stringContaining("step-") });

    // Different summation orders, not different math: every LoRA weight agrees to float32 noise
    // grown over a few steps.
    const expected = readSafetensors(await adapterBytes(uninterrupted), "uninterrupted").tensors;
    const actual = readSafetensors(await adapterBytes(job), "resumed").tensors;
    expect([...actual.keys()]).toEqual([...expected.keys()]);
    for (const [name, tensor] of expected) {
      const other = actual.get(name)!.data;
      const scale = Math.max(...tensor.data.map(Math.abs));
      const worst = Math.max(...tensor.data.map((value, i) => Math.abs(value - other[i]!)));
      expect(worst / scale, name).toBeLessThan(1e-3);
    }
  });
});

describe("kubetune run: inputs that are wrong", () => {
  /**
   * Runs a broken job and returns its one stderr line. On wasm: native TensorFlow writes a few
   * lines of its own to stderr when it loads, which would hide whether ours stays one line.
   */
  async function failure(job: TinyJob): Promise<string> {
    const finished = await kubetune(["run", job.manifestPath, "--no-sample"], { env: { KUBETUNE_BACKEND: "wasm" } });
    expect(finished.code, finished.stdout + finished.stderr).toBe(1);
    const lines = finished.stderr.trim().split("\n");
    expect(lines, finished.stderr).toHaveLength(1);
    return lines[0]!;
  }
  const model = (job: TinyJob, file: string) => path.join(job.dir, "model", file);

  it("a missing model folder", async () => {
    const job = await tinyJob({ baseModel: { uri: "no-such-model" } });
    expect(await failure(job)).toMatch(/^ModelNotFound: file:\/\/\/.*\/no-such-model\/config\.json: .*config\.json is missing/);
  });

  it("a truncated model.safetensors", async () => {
    const job = await tinyJob();
    await truncate(model(job, "model.safetensors"), 1000);
    expect(await failure(job)).toMatch(/^InvalidModel: file:\/\/\/.*\/model\/model\.safetensors: .*is it truncated\?$/);
  });

  it("a config.json without hidden_size", async () => {
    const job = await tinyJob();
    const config = JSON.parse(await readFile(model(job, "config.json"), "utf8"));
    delete config.hidden_size;
    await writeFile(model(job, "config.json"), JSON.stringify(config));
    expect(await failure(job)).toMatch(/^InvalidModel: file:\/\/\/.*\/model\/config\.json: missing field "hidden_size" \(a positive integer\)$/);
  });

  it("an unknown architecture", async () => {
    const job = await tinyJob();
    const config = JSON.parse(await readFile(model(job, "config.json"), "utf8"));
    await writeFile(model(job, "config.json"), JSON.stringify({ ...config, architectures: ["FalconForCausalLM"] }));
    expect(await failure(job)).toMatch(/^InvalidModel: file:\/\/\/.*\/model\/config\.json: unsupported architecture "FalconForCausalLM"; supported: LlamaForCausalLM, /);
  });

  it("a dataset line that is not JSON, named by file and line", async () => {
    const job = await tinyJob({}, [{ text: "one" }, { text: "two" }, "{not json", { text: "four" }]);
    expect(await failure(job)).toMatch(/^InvalidDataset: file:\/\/\/.*\/data\/train\.jsonl:3: invalid JSON \(/);
  });

  it("an invalid manifest, as path: message, before anything runs", async () => {
    const job = await tinyJob({ method: { type: "lora", lora: { r: 0 } } });
    const finished = await kubetune(["run", job.manifestPath]);
    expect(finished.code).toBe(1);
    expect(finished.stderr.trim()).toMatch(/^spec\.method\.lora\.r: must be/);
    expect(await readdir(job.dir)).not.toContain("out");
  });
});

describe("kubetune run and train against S3", () => {
  it("reads the model and data from s3:// and writes the outputs there, with the usual AWS variables", async () => {
    const { s3 } = cluster();
    const job = await tinyJob();
    const store = s3Store("trainer-cli");
    for (const file of await readdir(path.join(job.dir, "model"))) await store.put(`model/${file}`, await readFile(path.join(job.dir, "model", file)));
    await store.put("data/train.jsonl", await readFile(path.join(job.dir, "data", "train.jsonl")));
    const root = store.uri;
    const spec = {
      ...job.manifest.spec,
      baseModel: { uri: `${root}/model` },
      dataset: { ...job.manifest.spec.dataset, train: `${root}/data/train.jsonl` },
      output: { uri: `${root}/out` },
      storage: { endpoint: s3.endpoint, forcePathStyle: true, secretRef: { name: "s3-credentials" } },
    };
    const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
    const manifest = path.join(job.dir, "s3-job.json");
    await writeFile(manifest, JSON.stringify({ ...job.manifest, spec }));

    const finished = await kubetune(["run", manifest, "--json", "--no-sample"], { env });
    expect(finished.code, finished.stderr).toBe(0);
    expect(finished.events.at(-1)).toMatchObject({ event: "done", outputUri: `${root}/out` });
    const outputs = new Set<string>();
    // Checkpoint folders end in the job's owner tag (trainer/checkpoint/checkpoint.ts), shown here as "*".
    for await (const object of store.list("out/")) outputs.add(object.key.replace(/(step-\d{8})-[a-z0-9]+\//, "$1-*/"));
    expect(outputs).toEqual(
      new Set(["out/adapter_config.json", "out/adapter_model.safetensors", "out/training_metrics.json", "out/loss.svg", "out/manifest.json", "out/checkpoints/step-00000004-*/manifest.json", "out/checkpoints/step-00000004-*/state.json", "out/checkpoints/step-00000004-*/tensors.bin", "out/checkpoints/step-00000006-*/manifest.json", "out/checkpoints/step-00000006-*/state.json", "out/checkpoints/step-00000006-*/tensors.bin"]),
    );

    // The pod's command reads the same job from KUBETUNE_JOB_SPEC and finds it already trained.
    const pod = await kubetune(["train"], { env: { ...env, KUBETUNE_JOB_SPEC: JSON.stringify(spec) } });
    expect(pod.code, pod.stderr).toBe(0);
    expect(pod.events.find((event) => event.event === "start")).toMatchObject({ event: "start", step: 6, resumedFrom: expect.stringMatching(/\/out\/checkpoints\/step-00000006-[a-z0-9]+$/) });
    expect(pod.events.find((event) => event.event === "start")?.resumedFrom).toContain(`${root}/out/checkpoints/`);
    expect(pod.events.map((event) => event.event).slice(-2)).toEqual(["done", "sample"]);
  });

  it("kubetune train ends a failure with one `Reason: message` line for the operator", async () => {
    const job = await tinyJob();
    const spec = { ...job.manifest.spec, baseModel: { uri: path.join(job.dir, "missing-model") }, dataset: { train: path.join(job.dir, "data/train.jsonl") }, output: { uri: path.join(job.dir, "out") } };
    const pod = await kubetune(["train"], { env: { KUBETUNE_JOB_SPEC: JSON.stringify(spec) } });
    expect(pod.code).toBe(1);
    expect(pod.events.at(-1)).toMatchObject({ event: "error", reason: "ModelNotFound" });
    expect(pod.stderr.trim().split("\n").at(-1)).toMatch(/^ModelNotFound: file:\/\/\/.*\/missing-model\/config\.json: /);

    const invalid = await kubetune(["train"], { env: { KUBETUNE_JOB_SPEC: JSON.stringify({ ...spec, method: { type: "lora", lora: { r: -1 } } }) } });
    expect(invalid.code).toBe(1);
    expect(invalid.stderr.trim()).toMatch(/^InvalidSpec: spec\.method\.lora\.r: must be/);
  });
});
