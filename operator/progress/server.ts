import type { V1Pod } from "@kubernetes/client-node";
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import type { FineTuneJob } from "../../api/index.ts";
import type { KubeClient } from "../../kube/client.ts";
import { LABEL_ATTEMPT, LABEL_COMPONENT } from "../finetunejob/pods.ts";
import type { MetricsDecision } from "../metrics-auth.ts";
import type { OperatorMetrics } from "../metrics.ts";
import type { EventRecorder } from "../runtime/events.ts";
import { checkReport, type ProgressReport } from "./report.ts";
import { StatusWriter, WriteRefused } from "./status-writer.ts";
import { ProgressAuthenticator, type TokenReviewer } from "./token-review.ts";

/** What the listener accepts from a client before it gives up on it; every trainer stays far below. */
export interface ProgressLimits {
  /** Open connections at a time; more are dropped on accept. */
  maxConnections: number;
  /** Time for the TLS handshake. */
  handshakeTimeoutMs: number;
  /** Time for a request's headers to arrive (a client trickling them holds a connection no longer). */
  headersTimeoutMs: number;
  /** Time for a whole request, body included. */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this long. */
  idleTimeoutMs: number;
  /** Largest report body. */
  maxBodyBytes: number;
  maxHeaderBytes: number;
}

export const DEFAULT_PROGRESS_LIMITS: ProgressLimits = {
  maxConnections: 256,
  handshakeTimeoutMs: 10_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  idleTimeoutMs: 30_000,
  maxBodyBytes: 256 * 1024,
  maxHeaderBytes: 8 * 1024,
};

export interface ProgressServerOptions {
  client: KubeClient;
  /** Reviews trainers' projected service account tokens (audience kubetune-progress; token-review.ts). */
  tokenReviewer: TokenReviewer;
  tls: { cert: string | Buffer; key: string | Buffer };
  /** The job as the operator's cache knows it. */
  lookup: (namespace: string, name: string) => FineTuneJob | undefined;
  /** The job's pods as the operator's cache knows them (owned by the job; any component). */
  podsOf: (job: FineTuneJob) => V1Pod[];
  /** Only the leader accepts reports; a follower answers 503 and the trainer tries again (and reaches the leader). */
  isLeader: () => boolean;
  metrics: OperatorMetrics;
  /** Where trainer warnings become Warning Events on the job. */
  events?: EventRecorder;
  /** Least time between two status writes of one job (ordinary progress). Default 5 s. */
  writeIntervalMs?: number;
  /** Least time between two status writes when a trainer waits for a checkpoint or its outputs. Default 1 s. */
  urgentWriteIntervalMs?: number;
  limits?: Partial<ProgressLimits>;
  /**
   * Also serve GET /metrics on this TLS listener (on every replica), to whom `authorize` allows
   * (docs/metrics.md); without `authorize`, to anyone who reaches the port.
   */
  metricsEndpoint?: { authorize?: (authorization: string | undefined) => Promise<MetricsDecision> };
  log?: (message: string) => void;
}

const PATH = /^\/v1\/progress\/([a-z0-9-]+)\/([a-z0-9.-]+)\/attempts\/([1-9][0-9]{0,5})$/;
const LEGACY_PATH = /^\/v1\/progress\/[a-z0-9-]+\/[a-z0-9.-]+$/;

/**
 * The HTTPS endpoint trainers report progress to: POST
 * /v1/progress/<namespace>/<name>/attempts/<attempt> with `Authorization: Bearer <token>` (the
 * service account token projected into that attempt's trainer pod) and a ProgressReport body. It accepts reports only on the leader, only
 * from the job's current attempt, and only while the job has not finished; accepted reports go
 * to the job's status through a StatusWriter (a few writes per job per minute, however often
 * the trainer posts), to its metrics, and its warnings to Events.
 *
 * Answers: 202 accepted (written within a few seconds); 204 written (checkpoint and outputs
 * reports, which the trainer waits for); 400 bad report; 401/403 no or wrong token; 409 a
 * stale attempt or a finished job (do not retry); 413 too large; 503 not the leader, the token
 * could not be reviewed (the API server is unavailable) or the write failed (retry).
 */
export class ProgressServer {
  private server?: https.Server;
  private readonly writer: StatusWriter;
  private readonly limits: ProgressLimits;
  private readonly authenticator: ProgressAuthenticator;
  /** Warnings already turned into Events, per job and attempt: a trainer's retry of a report makes no second Event. */
  private readonly warned = new Set<string>();
  /** Reports accepted and refused; tests and the benchmark read these. */
  readonly counts = { accepted: 0, refused: 0 };

  constructor(private readonly options: ProgressServerOptions) {
    this.limits = { ...DEFAULT_PROGRESS_LIMITS, ...options.limits };
    this.authenticator = new ProgressAuthenticator({ reviewer: options.tokenReviewer, lookup: options.lookup, podsOf: options.podsOf });
    this.writer = new StatusWriter({
      client: options.client,
      lookup: options.lookup,
      ...(options.writeIntervalMs !== undefined ? { intervalMs: options.writeIntervalMs } : {}),
      ...(options.urgentWriteIntervalMs !== undefined ? { urgentIntervalMs: options.urgentWriteIntervalMs } : {}),
      onWrite: () => options.metrics.progressStatusWrites.inc(),
      ...(options.log ? { log: options.log } : {}),
    });
  }

  /** TokenReviews sent to the API server since start (each token is reviewed once while its answer is cached). */
  get tokenReviews(): number {
    return this.options.tokenReviewer.requests;
  }

  /** Status writes made for reports since start. */
  get statusWrites(): number {
    return this.writer.writes;
  }

  async listen(port: number, host = "0.0.0.0"): Promise<number> {
    const limits = this.limits;
    this.server = https.createServer(
      {
        cert: this.options.tls.cert,
        key: this.options.tls.key,
        handshakeTimeout: limits.handshakeTimeoutMs,
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.requestTimeoutMs,
        keepAliveTimeout: Math.min(limits.idleTimeoutMs, 5000),
        maxHeaderSize: limits.maxHeaderBytes,
        // Node checks the two timeouts above only this often (30 s by default).
        connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
      },
      (request, response) => {
        void this.handle(request, response).catch((error: unknown) => {
          this.options.log?.(`progress: ${(error as Error).message}`);
          if (!response.headersSent) response.writeHead(500).end("internal error\n");
        });
      },
    );
    this.server.maxConnections = limits.maxConnections;
    this.server.setTimeout(limits.idleTimeoutMs, (socket) => socket.destroy());
    await new Promise<void>((resolve) => this.server!.listen(port, host, resolve));
    return (this.server.address() as AddressInfo).port;
  }

  /** Presents a new certificate to new connections (a renewal; runtime/serving-keys.ts). */
  setTls(tls: { cert: string | Buffer; key: string | Buffer }): void {
    this.server?.setSecureContext({ cert: tls.cert, key: tls.key });
  }

  async close(): Promise<void> {
    await this.writer.close();
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = request.url ?? "";
    if (url === "/metrics" && this.options.metricsEndpoint) return this.serveMetrics(request, response);
    response.once("finish", () => this.options.metrics.progressReports.inc({ code: String(response.statusCode) }));
    const refuse = (status: number, message: string, headers: Record<string, string> = {}) => {
      this.counts.refused += 1;
      // The body is not read on a refusal: close the connection rather than leave it to drain.
      response.writeHead(status, { "content-type": "text/plain", connection: "close", ...headers }).end(`${message}\n`);
    };
    if (LEGACY_PATH.test(url)) return refuse(400, "the path must name the attempt: POST /v1/progress/<namespace>/<name>/attempts/<attempt> (is the trainer image older than the operator?)");
    const match = PATH.exec(url);
    if (!match) return refuse(404, "not found");
    if (request.method !== "POST") return refuse(405, "only POST", { allow: "POST" });
    // A follower's cache and metrics are not the ones that count; the trainer retries and reaches the leader.
    if (!this.options.isLeader()) return refuse(503, "this replica is not the leader; retry", { "retry-after": "1" });
    const [, namespace, name, attemptText] = match as unknown as [string, string, string, string];
    const attempt = Number(attemptText);
    const token = /^Bearer (.+)$/.exec(request.headers.authorization ?? "")?.[1];
    if (!token) return refuse(401, "missing bearer token");
    const declared = Number(request.headers["content-length"] ?? 0);
    if (declared > this.limits.maxBodyBytes) return refuse(413, `report too large (at most ${this.limits.maxBodyBytes} bytes)`);
    // The same answer for an unknown job as for a wrong token: a token reveals nothing about other jobs.
    const admission = await this.authenticator.admit(token, namespace, name, attempt);
    if (admission.status !== 200) return refuse(admission.status, admission.message, admission.status === 503 ? { "retry-after": "1" } : {});
    const job = admission.job;

    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of request) {
      size += (chunk as Buffer).length;
      if (size > this.limits.maxBodyBytes) return refuse(413, `report too large (at most ${this.limits.maxBodyBytes} bytes)`);
      chunks.push(chunk as Buffer);
    }
    let body: unknown;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return refuse(400, "body is not JSON");
    }
    const problems = checkReport(body);
    if (problems.length) return refuse(400, problems.join("; "));
    const report = body as ProgressReport;

    const stale = this.whyNotCurrent(job, attempt);
    if (stale) return refuse(409, stale);

    this.counts.accepted += 1;
    if (report.warning) await this.recordWarning(job, attempt, report.warning);
    this.observe(job, report);
    // A checkpoint or the outputs: the trainer is told only once they are in status (it may exit right after).
    const wait = report.checkpoint !== undefined || report.outputs !== undefined;
    try {
      await this.writer.submit({ namespace, name, uid: job.metadata.uid! }, report, wait);
    } catch (error) {
      const refused = error instanceof WriteRefused ? error : new WriteRefused(503, (error as Error).message);
      return void response.writeHead(refused.status, { "content-type": "text/plain", ...(refused.status === 503 ? { "retry-after": "1" } : {}) }).end(`${refused.message}\n`);
    }
    response.writeHead(wait ? 204 : 202).end();
  }

  private async serveMetrics(request: IncomingMessage, response: ServerResponse): Promise<void> {
    if (request.method !== "GET") return void response.writeHead(405, { allow: "GET" }).end("only GET\n");
    const authorize = this.options.metricsEndpoint?.authorize;
    const decision = authorize ? await authorize(request.headers.authorization) : { status: 200, message: "ok" };
    if (decision.status !== 200) {
      return void response.writeHead(decision.status, { "content-type": "text/plain", ...(decision.status === 401 ? { "www-authenticate": "Bearer" } : {}) }).end(`${decision.message}\n`);
    }
    const { registry } = this.options.metrics;
    response.writeHead(200, { "content-type": registry.contentType }).end(await registry.metrics());
  }

  /**
   * Why a report of this attempt must not change the job, if it must not: the job finished,
   * or the attempt is not the newest (the operator started another one, or this one's pod has
   * ended). The newest attempt is the larger of status.attempts and the cached trainer pods',
   * so a report is accepted before the cache shows a pod that status already counts.
   */
  private whyNotCurrent(job: FineTuneJob, attempt: number): string | undefined {
    const phase = job.status?.phase;
    if (phase === "Succeeded" || phase === "Failed") return `the job has ${phase.toLowerCase()}; its status no longer changes`;
    const trainers = this.options.podsOf(job).filter((pod) => pod.metadata?.labels?.[LABEL_COMPONENT] === "trainer");
    const newest = Math.max(job.status?.attempts ?? 0, ...trainers.map((pod) => Number(pod.metadata?.labels?.[LABEL_ATTEMPT] ?? 0)));
    if (attempt !== newest) return `attempt ${attempt} is not the job's current attempt (${newest}); reports of replaced attempts are refused`;
    const own = trainers.find((pod) => Number(pod.metadata?.labels?.[LABEL_ATTEMPT]) === attempt);
    const podPhase = own?.status?.phase;
    if (podPhase === "Succeeded" || podPhase === "Failed") return `the pod of attempt ${attempt} has ended (${podPhase})`;
    return undefined;
  }

  private async recordWarning(job: FineTuneJob, attempt: number, warning: { reason: string; message: string }): Promise<void> {
    const key = `${job.metadata.uid}/${attempt}/${warning.reason}/${warning.message}`;
    if (!this.options.events || this.warned.has(key)) return;
    this.warned.add(key);
    if (this.warned.size > 4096) this.warned.delete(this.warned.values().next().value as string);
    await this.options.events.record(job, "Warning", warning.reason, `attempt ${attempt}: ${warning.message}`);
  }

  private observe(job: FineTuneJob, report: ProgressReport): void {
    const { metrics } = this.options;
    const namespace = job.metadata.namespace!;
    const name = job.metadata.name!;
    if (report.backend) metrics.setJobBackend(namespace, name, report.backend.name, report.backend.device);
    const ratio = report.totalSteps ? Math.min(1, report.step / report.totalSteps) : undefined;
    metrics.setJobProgress(namespace, name, { ratio, loss: report.loss, tokensPerSecond: report.tokensPerSecond });
  }
}
