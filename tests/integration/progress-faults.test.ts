import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { resourcePath } from "../../kube/client.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { createBucket } from "../../localcluster/cluster.ts";
import { startMinio, type S3Server } from "../../localcluster/minio.ts";
import { freePort } from "../../localcluster/process.ts";
import { S3ObjectStore } from "../../storage/s3-store.ts";
import { writeTinyJob, type TinyJob } from "../../trainer/testing/tiny-job.ts";
import { createNamespace, eventually, kubeClient } from "./harness.ts";
import { eventsOf, getJob, jobsPath, KUBETUNE_IMAGE, podToken, scriptedJobManifest, startOperatorHarness, trainingJob, waitForPhase, type OperatorHarness } from "./operator-harness.ts";

/**
 * Faults around the progress channel, against the real API server: a trainer (or anything
 * holding its token) flooding the endpoint must not turn into a flood of status writes.
 */
describe("progress under load", () => {
  const client = kubeClient();
  let namespace: string;
  let harness: OperatorHarness;

  beforeAll(async () => {
    namespace = await createNamespace("progress");
    harness = await startOperatorHarness([namespace]);
  });

  afterAll(async () => {
    await harness?.stop();
  });

  it("turns 100 progress POSTs a second from one pod into a bounded number of status writes", async () => {
    await client.create(jobsPath(namespace), scriptedJobManifest("long-flood", namespace));
    const job = await eventually("the trainer's progress in status", async () => {
      const current = await getJob(namespace, "long-flood");
      return (current.status?.progress?.step ?? 0) > 0 ? current : undefined;
    });
    // The trainer pod's own kind of token: the flood costs one TokenReview, then the operator's cache answers.
    const token = await podToken(namespace, "long-flood-train-1");
    const reviewsBefore = harness.operator.progress.tokenReviews;

    // Every write the API server makes to the job, seen by a watch of our own.
    const writes: FineTuneJob[] = [];
    const abort = new AbortController();
    const watching = client
      .watch<FineTuneJob>(jobsPath(namespace), { fieldSelector: "metadata.name=long-flood", resourceVersion: job.metadata.resourceVersion }, (type, object) => {
        if (type === "MODIFIED") writes.push(object);
      }, abort.signal)
      .catch(() => undefined);

    const agent = new https.Agent({ keepAlive: true, maxSockets: 16, ca: harness.ca });
    const url = new URL(`/v1/progress/${namespace}/long-flood/attempts/1`, harness.options.settings.progressUrl);
    const post = (step: number) =>
      new Promise<number>((resolve) => {
        const body = JSON.stringify({ step, totalSteps: 1_000_000, loss: 1 + 1 / step, epoch: 0.1, learningRate: 1e-4, tokensPerSecond: 500 });
        const request = https.request(url, { method: "POST", agent, headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (response) => {
          response.resume();
          response.on("end", () => resolve(response.statusCode ?? 0));
        });
        request.once("error", () => resolve(0));
        request.end(body);
      });

    const seconds = 5;
    const statuses: Promise<number>[] = [];
    const started = Date.now();
    // 100 a second: each tick sends what is due by the clock, so a slow tick catches up instead of lowering the rate.
    while (statuses.length < seconds * 100) {
      const due = Math.min(seconds * 100, Math.floor((Date.now() - started) / 10) + 1);
      while (statuses.length < due) statuses.push(post(100_000 + statuses.length));
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const answers = await Promise.all(statuses);
    const elapsed = (Date.now() - started) / 1000;
    // Let the last coalesced write land, then count.
    await new Promise((resolve) => setTimeout(resolve, 6000));
    abort.abort();
    await watching;
    agent.destroy();

    console.log(`progress flood: ${answers.length} POSTs in ${elapsed.toFixed(1)} s -> ${writes.length} writes of the job (bound ${Math.ceil((elapsed + 6) / 5) + 3})`);
    expect(answers.filter((status) => status === 202).length).toBe(answers.length);
    // 500 POSTs with one token: one TokenReview (the trainer's own token was reviewed before; allow for its refresh).
    expect(harness.operator.progress.tokenReviews - reviewsBefore).toBeLessThanOrEqual(2);
    // The flood's reports did reach status (the highest steps are ours, not the scripted trainer's).
    expect(writes.some((object) => (object.status?.progress?.step ?? 0) >= 100_000)).toBe(true);
    // One write per 5 s interval for progress (the trainer's own reports included), plus the flush after the flood,
    // plus slack for the controller's own writes: against one write per POST before.
    const bound = Math.ceil((elapsed + 6) / 5) + 3;
    expect(writes.length).toBeLessThanOrEqual(bound);
    expect((await getJob(namespace, "long-flood")).status?.phase).toBe("Running");
    await client.delete(jobsPath(namespace, "long-flood"));
  });
});

/**
 * S3 going away under a running trainer: a MinIO of this test's own (so that stopping it
 * disturbs no other test) is stopped for 60 s right after the trainer's first checkpoint, so
 * that its next checkpoint (and its data and eval reads) meet a dead endpoint. The trainer
 * waits it out (storage/retrying-store.ts), the job succeeds in its first attempt, and the
 * adapter is byte for byte the one an uninterrupted run writes.
 */
describe("S3 stopped for 60 s while a trainer checkpoints", () => {
  const client = kubeClient();
  const bucket = "faults";
  let namespace: string;
  let harness: OperatorHarness;
  let tiny: TinyJob;
  let dir: string;
  let minio: string;
  let s3: S3Server;
  let port: number;
  let store: S3ObjectStore;

  beforeAll(async () => {
    ({ minio } = await resolveBinaries(["minio"]));
    dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-s3-fault-"));
    port = await freePort();
    s3 = await startMinio({ dir, minio, port });
    await createBucket(s3, bucket);
    store = new S3ObjectStore(bucket, "", { endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
    tiny = await writeTinyJob();
    for (const folder of ["model", "data"]) {
      for (const file of await readdir(path.join(tiny.dir, folder))) await store.put(`${folder}/${file}`, await readFile(path.join(tiny.dir, folder, file)));
    }
    namespace = await createNamespace("s3-fault");
    harness = await startOperatorHarness([namespace], { defaultImage: KUBETUNE_IMAGE });
    await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "s3-faulty" },
      stringData: { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
    });
  });

  afterAll(async () => {
    await harness?.stop();
    store?.close();
    await s3?.stop();
    if (tiny) await rm(tiny.dir, { recursive: true, force: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** The tiny real-trainer job (operator-harness.ts), reading and writing this test's own MinIO. */
  const manifest = (name: string): FineTuneJob =>
    trainingJob({ tiny, store }, namespace, name, { storage: { secretRef: { name: "s3-faulty" }, endpoint: s3.endpoint, forcePathStyle: true } });

  it("succeeds in its first attempt and writes the adapter an uninterrupted run writes", async () => {
    await client.create(jobsPath(namespace), manifest("uninterrupted"));
    const reference = await waitForPhase(namespace, "uninterrupted", ["Succeeded", "Failed"], 150_000);
    expect(reference.status?.phase).toBe("Succeeded");

    await client.create(jobsPath(namespace), manifest("outage"));
    await eventually("the first checkpoint of the trainer", async () => (harness.runner.logs(namespace, "outage-train-1").includes('"event":"checkpoint"') ? true : undefined), 120_000);
    await s3.stop();
    const stoppedAt = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 60_000));
    s3 = await startMinio({ dir, minio, port, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
    const restartedAfter = (Date.now() - stoppedAt) / 1000;

    const done = await waitForPhase(namespace, "outage", ["Succeeded", "Failed"], 240_000);
    expect(done.status?.conditions?.find((condition) => condition.type === "Failed")).toBeUndefined();
    expect(done.status).toMatchObject({ phase: "Succeeded", attempts: 1, failedAttempts: 0, progress: { step: 40 } });
    const adapter = (name: string) => store.get(`outputs/${name}/adapter_model.safetensors`);
    expect((await adapter("outage")).equals(await adapter("uninterrupted"))).toBe(true);

    // The trainer met the outage (at the checkpoint after the first, or a data read on the way), said so, and went on.
    const lines = harness.runner.logs(namespace, "outage-train-1").split("\n").filter((line) => line.startsWith("{"));
    const events = lines.map((line) => JSON.parse(line) as { event: string; reason?: string; step?: number });
    expect(events.some((event) => event.event === "warning" && event.reason === "StorageUnavailable")).toBe(true);
    expect(events.filter((event) => event.event === "checkpoint").map((event) => event.step)).toEqual([10, 20, 30, 40]);
    // ...and the operator turned that warning into a Warning Event on the job.
    const warnings = (await eventsOf(namespace, "outage")).filter((event) => event.reason === "StorageUnavailable");
    expect(warnings.length).toBeGreaterThan(0);
    console.log(`S3 outage: stopped ${restartedAfter.toFixed(0)} s; ${warnings.length} StorageUnavailable event(s); job Succeeded in attempt 1`);
  });
});
