import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { GROUP, PLURAL, VERSION, appendLossPoint, formatDuration, formatLoss, formatPercent, type FineTuneJob } from "../../api/index.ts";
import { resourcePath, type KubeClient } from "../../kube/client.ts";
import type { OperatorMetrics } from "../metrics.ts";
import { checkReport, type ProgressReport } from "./report.ts";
import { tokenMatches } from "./token.ts";

export interface ProgressServerOptions {
  client: KubeClient;
  key: Buffer;
  tls: { cert: string | Buffer; key: string | Buffer };
  /** The job as the operator's cache knows it (uid is what the token is bound to). */
  lookup: (namespace: string, name: string) => FineTuneJob | undefined;
  metrics: OperatorMetrics;
  log?: (message: string) => void;
}

/**
 * The HTTPS endpoint trainers report progress to: POST /v1/progress/<namespace>/<name> with
 * `Authorization: Bearer <token>` and a ProgressReport body. A valid report is written to the
 * job's status (progress, lastCheckpoint, outputs) and its metrics.
 */
export class ProgressServer {
  private server?: https.Server;
  /** Reports accepted and refused; tests and the benchmark read these. */
  readonly counts = { accepted: 0, refused: 0 };

  constructor(private readonly options: ProgressServerOptions) {}

  async listen(port: number, host = "0.0.0.0"): Promise<number> {
    this.server = https.createServer({ cert: this.options.tls.cert, key: this.options.tls.key }, (request, response) => {
      void this.handle(request, response).catch((error: unknown) => {
        this.options.log?.(`progress: ${(error as Error).message}`);
        if (!response.headersSent) response.writeHead(500).end("internal error\n");
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(port, host, resolve));
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const match = /^\/v1\/progress\/([a-z0-9-]+)\/([a-z0-9.-]+)$/.exec(request.url ?? "");
    if (request.method !== "POST" || !match) {
      response.writeHead(404).end("not found\n");
      return;
    }
    const [, namespace, name] = match as unknown as [string, string, string];
    const refuse = (status: number, message: string) => {
      this.counts.refused += 1;
      response.writeHead(status, { "content-type": "text/plain" }).end(`${message}\n`);
    };
    const token = /^Bearer (.+)$/.exec(request.headers.authorization ?? "")?.[1];
    if (!token) return refuse(401, "missing bearer token");
    const job = this.options.lookup(namespace, name);
    // The same answer for an unknown job as for a wrong token: a token reveals nothing about other jobs.
    if (!job?.metadata.uid || !tokenMatches(this.options.key, { namespace, name, uid: job.metadata.uid }, token)) {
      return refuse(403, "token is not valid for this job");
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of request) {
      size += (chunk as Buffer).length;
      if (size > 256 * 1024) return refuse(413, "report too large");
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
    await this.apply(job, body as ProgressReport);
    this.counts.accepted += 1;
    response.writeHead(204).end();
  }

  private async apply(job: FineTuneJob, report: ProgressReport): Promise<void> {
    const now = new Date().toISOString();
    const percent = report.totalSteps ? Math.min(100, Math.round((1000 * report.step) / report.totalSteps) / 10) : undefined;
    const progress: Record<string, unknown> = {
      step: report.step,
      totalSteps: report.totalSteps,
      epoch: report.epoch,
      percent,
      percentText: percent === undefined ? undefined : formatPercent(percent),
      loss: report.loss,
      lossText: report.loss === undefined ? undefined : formatLoss(report.loss),
      lossHistory: report.loss === undefined ? undefined : appendLossPoint(job.status?.progress?.lossHistory, { step: report.step, loss: report.loss }, report.totalSteps),
      evalLoss: report.evalLoss,
      learningRate: report.learningRate,
      tokensPerSecond: report.tokensPerSecond,
      etaSeconds: report.etaSeconds === undefined ? undefined : Math.round(report.etaSeconds),
      eta: report.etaSeconds === undefined ? undefined : formatDuration(report.etaSeconds),
      updatedAt: now,
    };
    // A report with nothing but a step (the trainer's first, naming its backend) leaves progress alone.
    const status: Record<string, unknown> =
      report.totalSteps === undefined && report.loss === undefined ? {} : { progress: Object.fromEntries(Object.entries(progress).filter(([, value]) => value !== undefined)) };
    if (report.backend) status.backend = report.backend;
    if (report.checkpoint) status.lastCheckpoint = { step: report.checkpoint.step, uri: report.checkpoint.uri, time: now };
    if (report.outputs) status.outputs = report.outputs;
    await this.options.client.patch(
      resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace: job.metadata.namespace, name: job.metadata.name, subresource: "status" }),
      { status },
    );
    if (report.backend) this.options.metrics.setJobBackend(job.metadata.namespace!, job.metadata.name!, report.backend.name, report.backend.device);
    this.options.metrics.setJobProgress(job.metadata.namespace!, job.metadata.name!, {
      ratio: percent === undefined ? undefined : percent / 100,
      loss: report.loss,
      tokensPerSecond: report.tokensPerSecond,
    });
  }
}
