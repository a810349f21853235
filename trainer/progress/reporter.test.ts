import https from "node:https";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makePki } from "../../localcluster/pki.ts";
import type { ProgressReport } from "../../operator/progress/report.ts";
import { ProgressReporter } from "./reporter.ts";

describe("ProgressReporter", () => {
  const received: { auth?: string; url?: string; body: ProgressReport }[] = [];
  /** HTTP statuses to answer the next requests with, in order; 204 once empty. */
  const answers: number[] = [];
  let server: https.Server;
  let url: string;
  let ca: string;

  beforeAll(async () => {
    const pki = await makePki(await mkdtemp(path.join(os.tmpdir(), "kubetune-reporter-")));
    ca = await readFile(pki.caCert, "utf8");
    server = https.createServer({ cert: await readFile(pki.servingCert), key: await readFile(pki.servingKey) }, (request, response) => {
      let body = "";
      request.on("data", (chunk: Buffer) => (body += chunk.toString()));
      request.on("end", () => {
        received.push({ auth: request.headers.authorization, url: request.url, body: JSON.parse(body) as ProgressReport });
        response.writeHead(answers.shift() ?? 204).end("why\n");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it("throttles step reports, sends checkpoints at once with the newest progress, and flushes the rest", async () => {
    received.length = 0;
    const reporter = new ProgressReporter({ url, namespace: "team", name: "job", token: "secret-token", attempt: 2, ca, minIntervalMs: 60_000 });
    reporter.report({ step: 1, totalSteps: 10, loss: 3 });
    reporter.report({ step: 2, totalSteps: 10, loss: 2.5 });
    reporter.report({ step: 3, totalSteps: 10, loss: 2 });
    reporter.report({ step: 3, checkpoint: { step: 3, uri: "s3://b/ckpt/step-00000003" } });
    reporter.report({ step: 4, totalSteps: 10, loss: 1.5 });
    await reporter.flush();
    expect(received.map((entry) => entry.body)).toEqual([
      { step: 1, totalSteps: 10, loss: 3 },
      { step: 3, totalSteps: 10, loss: 2, checkpoint: { step: 3, uri: "s3://b/ckpt/step-00000003" } },
      { step: 4, totalSteps: 10, loss: 1.5 },
    ]);
    expect(received.every((entry) => entry.auth === "Bearer secret-token")).toBe(true);
    expect(received.every((entry) => entry.url === "/v1/progress/team/job/attempts/2")).toBe(true);
  });

  it("retries a checkpoint report while the operator answers 503, and drops an ordinary one", async () => {
    received.length = 0;
    const logged: string[] = [];
    const reporter = new ProgressReporter({ url, namespace: "team", name: "job", token: "t", attempt: 1, ca, minIntervalMs: 0, log: (line) => logged.push(line) });
    answers.push(503);
    reporter.report({ step: 1, totalSteps: 10, loss: 3 });
    await reporter.flush();
    expect(received).toHaveLength(1);
    expect(logged).toEqual(["progress report refused with HTTP 503 (why)"]);
    answers.push(503, 503);
    reporter.report({ step: 2, checkpoint: { step: 2, uri: "s3://b/ckpt/step-00000002" } });
    await reporter.flush();
    expect(received.map((entry) => entry.body.checkpoint?.step)).toEqual([undefined, 2, 2, 2]);
    expect(logged).toHaveLength(1);
  });

  it("stops reporting once the operator refuses the attempt for good (409)", async () => {
    received.length = 0;
    const logged: string[] = [];
    const reporter = new ProgressReporter({ url, namespace: "team", name: "job", token: "t", attempt: 1, ca, minIntervalMs: 0, log: (line) => logged.push(line) });
    answers.push(409);
    reporter.report({ step: 1, checkpoint: { step: 1, uri: "s3://b/ckpt/step-00000001" } });
    reporter.report({ step: 2, totalSteps: 10, loss: 2 });
    reporter.report({ step: 2, warning: { reason: "CheckpointUnreadable", message: "m" } });
    await reporter.flush();
    expect(received).toHaveLength(1);
    expect(logged[0]).toMatch(/refused for good \(HTTP 409: why\)/);
  });

  it("reads the projected token file for every report, so a token the kubelet rotates is used at once", async () => {
    received.length = 0;
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-token-"));
    const tokenFile = path.join(dir, "token");
    await writeFile(tokenFile, "first-token\n");
    const reporter = ProgressReporter.fromEnv(
      { KUBETUNE_PROGRESS_URL: url, KUBETUNE_PROGRESS_TOKEN_FILE: tokenFile, KUBETUNE_PROGRESS_CA: ca, KUBETUNE_JOB_NAMESPACE: "team", KUBETUNE_JOB_NAME: "job", KUBETUNE_ATTEMPT: "3" },
      undefined,
      0,
    )!;
    await reporter.send({ step: 1 });
    await writeFile(tokenFile, "rotated-token");
    await reporter.send({ step: 2 });
    expect(received.map((entry) => [entry.auth, entry.url])).toEqual([
      ["Bearer first-token", "/v1/progress/team/job/attempts/3"],
      ["Bearer rotated-token", "/v1/progress/team/job/attempts/3"],
    ]);
  });

  it("says which file is missing when the token file cannot be read, and sends nothing", async () => {
    received.length = 0;
    const logged: string[] = [];
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-token-"));
    const tokenFile = path.join(dir, "token");
    const reporter = new ProgressReporter({ url, namespace: "team", name: "job", tokenFile, attempt: 1, ca, minIntervalMs: 0, log: (line) => logged.push(line) });
    await reporter.send({ step: 1 });
    expect(logged).toEqual([`progress report not delivered: cannot read the progress token file ${tokenFile} (KUBETUNE_PROGRESS_TOKEN_FILE): it does not exist; is the pod's progress-token volume mounted?`]);
    expect(received).toEqual([]);
    await rm(dir, { recursive: true });
  });

  it("never fails training when the operator is unreachable", async () => {
    const logged: string[] = [];
    const reporter = new ProgressReporter({ url: "https://127.0.0.1:1", namespace: "n", name: "j", token: "t", attempt: 1, ca, log: (line) => logged.push(line) });
    reporter.report({ step: 1 });
    await reporter.flush();
    expect(logged[0]).toMatch(/progress report not delivered/);
  });
});
