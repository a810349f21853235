import type { V1Pod } from "@kubernetes/client-node";
import { mkdtemp, readFile } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { resourcePath } from "../../kube/client.ts";
import { FakeKube } from "../../kube/fake.ts";
import { makePki } from "../../localcluster/pki.ts";
import { LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB_NAME, PROGRESS_AUDIENCE } from "../finetunejob/pods.ts";
import { OperatorMetrics } from "../metrics.ts";
import { EventRecorder } from "../runtime/events.ts";
import { FakeTokenReviews } from "./fake-token-reviews.ts";
import { ProgressServer, type ProgressServerOptions } from "./server.ts";
import { TokenReviewer } from "./token-review.ts";

const namespace = "team-a";
const jobPath = (name?: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
const statusPath = (name: string) => `${jobPath(name)}/status`;

let pem: { cert: Buffer; key: Buffer; ca: string };
beforeAll(async () => {
  const pki = await makePki(await mkdtemp(path.join(os.tmpdir(), "kubetune-progress-")));
  pem = { cert: await readFile(pki.servingCert), key: await readFile(pki.servingKey), ca: await readFile(pki.caCert, "utf8") };
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A job at attempt `attempts` (its pod running), stored in the fake API server. */
async function storeJob(kube: FakeKube, name: string, status: FineTuneJob["status"] = { phase: "Running", attempts: 1 }): Promise<FineTuneJob> {
  const created = await kube.create<FineTuneJob>(jobPath(), {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace },
    spec: { baseModel: { uri: "s3://m/x" }, dataset: { train: "s3://d/t.jsonl" }, method: { type: "lora" }, output: { uri: "s3://o/x" } },
  } as FineTuneJob);
  await kube.patch(statusPath(name), { status });
  return { ...created, status };
}

function trainerPodOf(job: FineTuneJob, attempt: number, phase: string): V1Pod {
  return {
    metadata: {
      name: `${job.metadata.name}-train-${attempt}`,
      namespace,
      uid: `${job.metadata.uid}-pod-${attempt}`,
      labels: { [LABEL_COMPONENT]: "trainer", [LABEL_JOB_NAME]: job.metadata.name!, [LABEL_ATTEMPT]: String(attempt) },
      ownerReferences: [{ apiVersion: API_VERSION, kind: KIND, name: job.metadata.name!, uid: job.metadata.uid!, controller: true }],
    },
    status: { phase },
  };
}

describe("ProgressServer", () => {
  let server: ProgressServer | undefined;
  let port = 0;
  /** The API server's TokenReview; trainer pods' projected tokens come from it. */
  let reviews = new FakeTokenReviews();
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  async function start(kube: FakeKube, options: Partial<ProgressServerOptions> & { pods?: V1Pod[] } = {}): Promise<ProgressServer> {
    reviews = new FakeTokenReviews();
    server = new ProgressServer({
      client: kube.asClient(),
      tokenReviewer: new TokenReviewer(reviews.asClient(), { audiences: [PROGRESS_AUDIENCE] }),
      tls: { cert: pem.cert, key: pem.key },
      lookup: (ns, name) => kube.stored<FineTuneJob>(`${resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace: ns })}/${name}`),
      // Unless a test says otherwise, the cache shows attempt 1's pod running.
      podsOf: (job) => options.pods ?? [trainerPodOf(job, 1, "Running")],
      isLeader: () => true,
      metrics: new OperatorMetrics(),
      writeIntervalMs: 400,
      urgentWriteIntervalMs: 100,
      ...options,
    });
    port = await server.listen(0, "127.0.0.1");
    return server;
  }

  function post(job: FineTuneJob, attempt: number, body: unknown, options: { token?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; text: string; retryAfter?: string }> {
    const token = options.token ?? tokenOf(job, attempt);
    const payload = JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const request = https.request(
        { host: "127.0.0.1", port, method: "POST", path: `/v1/progress/${namespace}/${job.metadata.name}/attempts/${attempt}`, ca: pem.ca, agent: false, headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "content-length": Buffer.byteLength(payload), ...options.headers } },
        (response) => {
          let text = "";
          response.on("data", (chunk: Buffer) => (text += chunk.toString()));
          response.on("end", () => resolve({ status: response.statusCode ?? 0, text, retryAfter: response.headers["retry-after"] }));
        },
      );
      request.once("error", reject);
      request.end(payload);
    });
  }

  /** The token the kubelet projects into the job's trainer pod of this attempt. */
  const tokenOf = (job: FineTuneJob, attempt: number, audiences?: string[]) =>
    reviews.issue({ namespace, name: `${job.metadata.name}-train-${attempt}`, uid: `${job.metadata.uid}-pod-${attempt}` }, { ...(audiences ? { audiences } : {}) });

  const statusPatches = (kube: FakeKube, name: string) => kube.calls.filter((call) => call.method === "PATCH" && call.path === statusPath(name)).length;

  it("accepts the token projected into the current attempt's pod only: another attempt's, another job's or another audience's is refused", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    const other = await storeJob(kube, "other");
    await start(kube);
    expect((await post(job, 1, { step: 1 }, { token: tokenOf(job, 2) })).status).toBe(403);
    expect((await post(job, 1, { step: 1 }, { token: tokenOf(other, 1) })).status).toBe(403);
    expect((await post(job, 1, { step: 1 }, { token: tokenOf(job, 1, ["https://kubernetes.default.svc"]) })).status).toBe(403);
    expect((await post(job, 1, { step: 1 }, { token: "nope" })).status).toBe(403);
    expect((await post(job, 1, { step: 1, totalSteps: 10, loss: 2 })).status).toBe(202);
  });

  it("answers 503 with Retry-After while the API server cannot review tokens, so that the trainer retries", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    await start(kube);
    reviews.failWith = 500;
    const answer = await post(job, 1, { step: 1 });
    expect(answer).toMatchObject({ status: 503, retryAfter: "1", text: expect.stringContaining("cannot check the token with the API server") });
    reviews.failWith = undefined;
    expect((await post(job, 1, { step: 1, totalSteps: 10, loss: 2 })).status).toBe(202);
  });

  it("refuses a report from a replaced attempt's pod, with its own valid token, and leaves status alone", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune", { phase: "Running", attempts: 2, lastCheckpoint: { step: 20, uri: "s3://o/x/checkpoints/step-00000020", time: "2026-01-01T00:00:00Z" } });
    // Attempt 1's pod is still there (a partitioned node), with its valid token.
    await start(kube, { pods: [trainerPodOf(job, 1, "Running"), trainerPodOf(job, 2, "Running")] });
    const stale = await post(job, 1, { step: 10, checkpoint: { step: 10, uri: "s3://o/x/checkpoints/step-00000010" } });
    expect(stale).toMatchObject({ status: 409, text: expect.stringContaining("attempt 1 is not the job's current attempt (2)") });
    expect((await post(job, 2, { step: 21, checkpoint: { step: 21, uri: "s3://o/x/checkpoints/step-00000021" } })).status).toBe(204);
    expect(kube.stored<FineTuneJob>(jobPath("tune"))?.status?.lastCheckpoint?.step).toBe(21);
  });

  it("refuses a report of an attempt whose pod has ended, and one that status does not count yet but a newer pod exists for", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune", { phase: "Running", attempts: 1 });
    await start(kube, { pods: [trainerPodOf(job, 1, "Failed"), trainerPodOf(job, 2, "Pending")] });
    expect((await post(job, 1, { step: 3, totalSteps: 10, loss: 1 })).status).toBe(409);
    await server!.close();
    await start(kube, { pods: [trainerPodOf(job, 1, "Failed")] });
    expect((await post(job, 1, { step: 3, totalSteps: 10, loss: 1 })).text).toContain("the pod of attempt 1 has ended (Failed)");
  });

  it("refuses reports for a Succeeded or Failed job: its outputs are never rewritten", async () => {
    const kube = new FakeKube();
    const outputs = { uri: "s3://o/x", files: [{ name: "adapter_model.safetensors", sha256: "a".repeat(64) }] };
    for (const phase of ["Succeeded", "Failed"] as const) {
      const job = await storeJob(kube, `done-${phase.toLowerCase()}`, { phase, attempts: 1, outputs });
      await start(kube);
      const answer = await post(job, 1, { step: 9, outputs: { uri: "s3://forged/x", files: [] } });
      expect(answer).toMatchObject({ status: 409, text: expect.stringContaining(`the job has ${phase.toLowerCase()}`) });
      expect(kube.stored<FineTuneJob>(jobPath(job.metadata.name))?.status?.outputs).toEqual(outputs);
      await server!.close();
    }
  });

  it("writes a DPO step's preference metrics into status.progress, and refuses malformed ones naming the field", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    await start(kube);
    const preference = { rewardsChosen: 0.2, rewardsRejected: -0.1, rewardsAccuracies: 0.75, rewardsMargins: 0.3, logpsChosen: -12.5, logpsRejected: -20 };
    const bad = await post(job, 1, { step: 1, totalSteps: 10, loss: 0.6, preference: { ...preference, rewardsMargins: "high" } });
    expect(bad.status).toBe(400);
    expect(bad.text).toContain("preference: must be {rewardsChosen");
    expect((await post(job, 1, { step: 2, totalSteps: 10, loss: 0.6, preference: { ...preference, extra: 1 } })).status).toBe(202);
    await sleep(600);
    expect(kube.stored<FineTuneJob>(jobPath("tune"))?.status?.progress?.preference).toEqual(preference);
  });

  it("coalesces a flood of reports into a bounded number of status writes, the latest winning", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    await start(kube);
    const before = statusPatches(kube, "tune");
    const started = Date.now();
    let step = 0;
    // 100 reports a second for 1.5 s (writeIntervalMs is 400 here).
    while (Date.now() - started < 1500) {
      step += 1;
      const answers = await Promise.all([1, 2].map((offset) => post(job, 1, { step: step * 2 + offset, totalSteps: 10_000, loss: 10 / (step + offset) })));
      expect(answers.map((answer) => answer.status)).toEqual([202, 202]);
      await sleep(20);
    }
    await sleep(900);
    const elapsed = Date.now() - started;
    const writes = statusPatches(kube, "tune") - before;
    expect(step * 2).toBeGreaterThan(20);
    // One write at once, then at most one per interval.
    expect(writes).toBeGreaterThanOrEqual(2);
    expect(writes).toBeLessThanOrEqual(Math.ceil(elapsed / 400) + 1);
    expect(server!.statusWrites).toBe(writes);
    const progress = kube.stored<FineTuneJob>(jobPath("tune"))?.status?.progress;
    expect(progress?.step).toBe(step * 2 + 2);
    expect(progress?.lossHistory?.at(-1)?.step).toBe(step * 2 + 2);
  });

  it("answers a checkpoint report only once it is in status, and keeps what the controller wrote meanwhile (conflict, cache catches up, retry)", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    // A cache that lags: it still shows the version before the controller's condition write, until its watch delivers it.
    const stale = kube.stored<FineTuneJob>(jobPath("tune"))!;
    await kube.patch(statusPath("tune"), { status: { conditions: [{ type: "Running", status: "True", reason: "Training", message: "", lastTransitionTime: "2026-01-01T00:00:00Z" }] } });
    const writeTries = () => kube.calls.filter((call) => call.method === "PATCH" && call.path === statusPath("tune")).length;
    const triesBefore = writeTries();
    await start(kube, { lookup: () => (writeTries() === triesBefore ? stale : kube.stored<FineTuneJob>(jobPath("tune"))) });
    const answer = await post(job, 1, { step: 5, checkpoint: { step: 5, uri: "s3://o/x/checkpoints/step-00000005" } });
    expect(answer.status).toBe(204);
    const stored = kube.stored<FineTuneJob>(jobPath("tune"))!;
    expect(stored.status?.lastCheckpoint).toMatchObject({ step: 5 });
    expect(stored.status?.conditions?.[0]?.reason).toBe("Training");
    // One try met the conflict; the operator's cache, not a GET, gave the newer version for the second.
    expect(writeTries() - triesBefore).toBe(2);
    expect(kube.calls.filter((call) => call.method === "GET" && call.path === jobPath("tune"))).toHaveLength(0);
  });

  it("drops a pending write whose job finished before it was made, and tells the waiting trainer", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    await start(kube, { writeIntervalMs: 2000, urgentWriteIntervalMs: 1000 });
    expect((await post(job, 1, { step: 1, totalSteps: 10, loss: 3 })).status).toBe(202);
    await sleep(100);
    const waiting = post(job, 1, { step: 2, outputs: { uri: "s3://o/x", files: [] } });
    await sleep(200);
    await kube.patch(statusPath("tune"), { status: { phase: "Failed" } });
    expect(await waiting).toMatchObject({ status: 409, text: expect.stringContaining("the job has failed") });
    expect(kube.stored<FineTuneJob>(jobPath("tune"))?.status?.outputs).toBeUndefined();
  });

  it("answers 503 on a replica that is not the leader, before looking at the report", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    await start(kube, { isLeader: () => false });
    const answer = await post(job, 1, { step: 1, totalSteps: 10, loss: 1 });
    expect(answer.status).toBe(503);
    expect(statusPatches(kube, "tune")).toBe(1);
  });

  it("turns a trainer's warning into one Warning Event on the job, however often it is posted", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    await start(kube, { events: new EventRecorder(kube.asClient(), "kubetune-operator") });
    const warning = { reason: "CheckpointUnreadable", message: "checkpoint s3://o/x/checkpoints/step-00000020 cannot be read; resuming from step 10" };
    for (let i = 0; i < 3; i++) expect((await post(job, 1, { step: 10, warning })).status).toBe(202);
    expect((await post(job, 1, { step: 10, warning: { reason: "not camel", message: "x" } })).status).toBe(400);
    const events = kube.storedIn<{ type: string; reason: string; message: string; count: number; involvedObject: { uid: string } }>(resourcePath({ group: "", version: "v1", plural: "events", namespace }));
    expect(events).toEqual([expect.objectContaining({ type: "Warning", reason: "CheckpointUnreadable", message: `attempt 1: ${warning.message}`, count: 1, involvedObject: expect.objectContaining({ uid: job.metadata.uid }) })]);
  });

  it("limits the listener: body size, header time, and open connections", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube, "tune");
    await start(kube, { limits: { maxBodyBytes: 1024, headersTimeoutMs: 300, maxConnections: 4 } });
    expect((await post(job, 1, { step: 1, pad: "x".repeat(2000) })).status).toBe(413);
    // A client that sends part of its headers and then nothing is cut off.
    const slow = tls.connect({ host: "127.0.0.1", port, ca: pem.ca });
    await new Promise((resolve) => slow.once("secureConnect", resolve));
    slow.write("POST /v1/progress/team-a/tune/attempts/1 HTTP/1.1\r\nHost: x\r\n");
    const closedAfter = await new Promise<number>((resolve) => {
      const opened = Date.now();
      slow.once("close", () => resolve(Date.now() - opened));
      slow.on("data", () => undefined);
    });
    expect(closedAfter).toBeLessThan(5000);
    // Connections beyond the cap are dropped at once.
    const idle = await Promise.all(
      Array.from({ length: 4 }, () => new Promise<net.Socket>((resolve) => {
        const socket = net.connect(port, "127.0.0.1", () => resolve(socket));
      })),
    );
    const extra = net.connect(port, "127.0.0.1");
    const extraClosed = await new Promise<boolean>((resolve) => {
      extra.once("close", () => resolve(true));
      extra.once("error", () => resolve(true));
      setTimeout(() => resolve(false), 3000);
    });
    expect(extraClosed).toBe(true);
    for (const socket of idle) socket.destroy();
  });
});
