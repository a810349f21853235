import https from "node:https";
import type { ProgressReport } from "../../operator/progress/report.ts";

export interface ReporterOptions {
  /** https://host:port of the operator's progress endpoint. */
  url: string;
  namespace: string;
  name: string;
  token: string;
  /** PEM of the CA that signed the endpoint's certificate. */
  ca?: string;
  /** Reports are sent at most this often; checkpoints and outputs are always sent. */
  minIntervalMs?: number;
  log?: (message: string) => void;
}

/**
 * Sends the trainer's progress to the operator. Best effort by design: a report that cannot be
 * delivered is logged and dropped, never fails training; ordinary updates are throttled to one
 * every few seconds, while checkpoint and output reports always go out.
 */
export class ProgressReporter {
  private lastSent = 0;
  private pending?: ProgressReport;
  /** The newest report, whose progress fields ride along with checkpoint and output reports. */
  private latest?: ProgressReport;
  private inFlight: Promise<void> = Promise.resolve();

  constructor(private readonly options: ReporterOptions) {}

  /** Reads KUBETUNE_PROGRESS_URL/TOKEN/CA and the job's name from the pod's environment; undefined outside a cluster. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env, log?: (message: string) => void, minIntervalMs?: number): ProgressReporter | undefined {
    const { KUBETUNE_PROGRESS_URL: url, KUBETUNE_PROGRESS_TOKEN: token, KUBETUNE_JOB_NAMESPACE: namespace, KUBETUNE_JOB_NAME: name } = env;
    if (!url || !token || !namespace || !name) return undefined;
    return new ProgressReporter({ url, token, namespace, name, ca: env.KUBETUNE_PROGRESS_CA, log, minIntervalMs });
  }

  report(report: ProgressReport): void {
    const important = report.checkpoint !== undefined || report.outputs !== undefined || report.backend !== undefined;
    const interval = this.options.minIntervalMs ?? 5000;
    if (important) {
      // Checkpoints and outputs go at once, carrying the newest progress with them; they do not
      // restart the throttle window, or frequent checkpoints would starve the progress updates.
      const { checkpoint: _checkpoint, outputs: _outputs, backend: _backend, ...progress } = this.latest ?? { step: report.step };
      this.latest = { ...progress, ...report, checkpoint: undefined, outputs: undefined, backend: undefined };
      this.pending = undefined;
      this.enqueue({ ...progress, ...report });
      return;
    }
    this.latest = report;
    if (Date.now() - this.lastSent < interval) {
      this.pending = report;
      return;
    }
    this.pending = undefined;
    this.lastSent = Date.now();
    this.enqueue(report);
  }

  private enqueue(report: ProgressReport): void {
    this.inFlight = this.inFlight.then(() => this.send(report));
  }

  /** Sends any throttled report and waits for everything in flight. */
  async flush(): Promise<void> {
    if (this.pending) {
      const report = this.pending;
      this.pending = undefined;
      this.enqueue(report);
    }
    await this.inFlight;
  }

  /** Posts one report; resolves with the HTTP status (0 when unreachable). */
  send(report: ProgressReport): Promise<void> {
    return this.post(report).then(
      (status) => {
        if (status !== 204) this.options.log?.(`progress report refused with HTTP ${status}`);
      },
      (error: unknown) => this.options.log?.(`progress report not delivered: ${(error as Error).message}`),
    );
  }

  post(report: ProgressReport): Promise<number> {
    const url = new URL(`/v1/progress/${this.options.namespace}/${this.options.name}`, this.options.url);
    const body = JSON.stringify(report);
    return new Promise((resolve, reject) => {
      const request = https.request(
        url,
        {
          method: "POST",
          ca: this.options.ca,
          timeout: 10_000,
          headers: { authorization: `Bearer ${this.options.token}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
        },
        (response) => {
          response.resume();
          response.on("end", () => resolve(response.statusCode ?? 0));
        },
      );
      request.once("timeout", () => request.destroy(new Error("timed out")));
      request.once("error", reject);
      request.end(body);
    });
  }
}
