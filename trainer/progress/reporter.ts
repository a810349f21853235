import { readFile } from "node:fs/promises";
import https from "node:https";
import type { ProgressReport } from "../../operator/progress/report.ts";

export interface ReporterOptions {
  /** https://host:port of the operator's progress endpoint. */
  url: string;
  namespace: string;
  name: string;
  /**
   * The file holding the bearer token (KUBETUNE_PROGRESS_TOKEN_FILE): the service account token
   * the kubelet projects into the pod and rotates, so it is read again for every report.
   */
  tokenFile?: string;
  /** A fixed bearer token instead (KUBETUNE_PROGRESS_TOKEN; tests). */
  token?: string;
  /** The attempt this trainer pod runs (KUBETUNE_ATTEMPT); its pod's token is valid for it only. */
  attempt: number;
  /** PEM of the CA that signed the endpoint's certificate. */
  ca?: string;
  /** Reports are sent at most this often; checkpoints and outputs are always sent. */
  minIntervalMs?: number;
  /** How long a checkpoint, outputs, backend or warning report is retried while the operator cannot take it (503, unreachable). Default 60 s. */
  retryBudgetMs?: number;
  log?: (message: string) => void;
}

/**
 * Sends the trainer's progress to the operator. Best effort by design: a report that cannot be
 * delivered is logged and dropped, never fails training; ordinary updates are throttled to one
 * every few seconds, while checkpoint, output, backend and warning reports always go out and
 * are retried with backoff for a while when the operator answers 503 (a follower replica, a
 * leader change) or cannot be reached. A 409 (this attempt was replaced, or the job finished)
 * stops all further reports: the operator will not take them.
 */
export class ProgressReporter {
  private lastSent = 0;
  private pending?: ProgressReport;
  /** The newest report, whose progress fields ride along with checkpoint and output reports. */
  private latest?: ProgressReport;
  private inFlight: Promise<void> = Promise.resolve();
  /** Why the operator refused this attempt's reports for good (409), once it has. */
  private refusedFor?: string;

  constructor(private readonly options: ReporterOptions) {}

  /** Reads KUBETUNE_PROGRESS_URL, _TOKEN_FILE (or _TOKEN), _CA and the job's name from the pod's environment; undefined outside a cluster. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env, log?: (message: string) => void, minIntervalMs?: number): ProgressReporter | undefined {
    const { KUBETUNE_PROGRESS_URL: url, KUBETUNE_PROGRESS_TOKEN_FILE: tokenFile, KUBETUNE_PROGRESS_TOKEN: token, KUBETUNE_JOB_NAMESPACE: namespace, KUBETUNE_JOB_NAME: name } = env;
    if (!url || !(tokenFile || token) || !namespace || !name) return undefined;
    const attempt = Number(env.KUBETUNE_ATTEMPT ?? "1");
    if (!Number.isInteger(attempt) || attempt < 1) {
      log?.(`KUBETUNE_ATTEMPT is ${JSON.stringify(env.KUBETUNE_ATTEMPT)}, not a positive integer: progress is not reported`);
      return undefined;
    }
    return new ProgressReporter({ url, ...(tokenFile ? { tokenFile } : { token }), namespace, name, attempt, ca: env.KUBETUNE_PROGRESS_CA, log, minIntervalMs });
  }

  report(report: ProgressReport): void {
    const important = isImportant(report);
    const interval = this.options.minIntervalMs ?? 5000;
    if (important) {
      // Checkpoints and outputs go at once, carrying the newest progress with them; they do not
      // restart the throttle window, or frequent checkpoints would starve the progress updates.
      const { checkpoint: _checkpoint, outputs: _outputs, backend: _backend, warning: _warning, ...progress } = this.latest ?? { step: report.step };
      this.latest = { ...progress, ...report, checkpoint: undefined, outputs: undefined, backend: undefined, warning: undefined };
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

  /** Posts one report, retrying an important one while the operator cannot take it; never rejects. */
  async send(report: ProgressReport): Promise<void> {
    if (this.refusedFor) return;
    const deadline = Date.now() + (isImportant(report) ? (this.options.retryBudgetMs ?? 60_000) : 0);
    for (let tries = 1; ; tries += 1) {
      let problem: string;
      try {
        const { status, message } = await this.postWithMessage(report);
        if (status >= 200 && status < 300) return;
        if (status === 409) {
          this.refusedFor = message;
          this.options.log?.(`progress reports refused for good (HTTP 409: ${message}); training goes on without them`);
          return;
        }
        problem = `refused with HTTP ${status}${message ? ` (${message})` : ""}`;
        if (status !== 503 && status !== 429) return void this.options.log?.(`progress report ${problem}`);
      } catch (error) {
        problem = `not delivered: ${(error as Error).message}`;
      }
      const delay = Math.min(10_000, 500 * 2 ** (tries - 1));
      if (Date.now() + delay > deadline) return void this.options.log?.(`progress report ${problem}`);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  /** Posts one report once; resolves with the HTTP status. */
  async post(report: ProgressReport): Promise<number> {
    return (await this.postWithMessage(report)).status;
  }

  /** The bearer token, read from its file now: the kubelet replaces the file well before the token expires. */
  private async bearerToken(): Promise<string> {
    const { tokenFile, token } = this.options;
    if (!tokenFile) {
      if (token === undefined) throw new Error("no progress token: set KUBETUNE_PROGRESS_TOKEN_FILE");
      return token;
    }
    let text: string;
    try {
      text = await readFile(tokenFile, "utf8");
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new Error(`cannot read the progress token file ${tokenFile} (KUBETUNE_PROGRESS_TOKEN_FILE): ${code === "ENOENT" ? "it does not exist; is the pod's progress-token volume mounted?" : (error as Error).message}`);
    }
    const trimmed = text.trim();
    if (!trimmed) throw new Error(`the progress token file ${tokenFile} (KUBETUNE_PROGRESS_TOKEN_FILE) is empty`);
    return trimmed;
  }

  private async postWithMessage(report: ProgressReport): Promise<{ status: number; message: string }> {
    const url = new URL(`/v1/progress/${this.options.namespace}/${this.options.name}/attempts/${this.options.attempt}`, this.options.url);
    const body = JSON.stringify(report);
    const token = await this.bearerToken();
    return new Promise((resolve, reject) => {
      const request = https.request(
        url,
        {
          method: "POST",
          ca: this.options.ca,
          timeout: 10_000,
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
        },
        (response) => {
          let text = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => (text = (text + chunk).slice(0, 1024)));
          response.on("end", () => resolve({ status: response.statusCode ?? 0, message: text.trim() }));
        },
      );
      request.once("timeout", () => request.destroy(new Error("timed out")));
      request.once("error", reject);
      request.end(body);
    });
  }
}

/** Reports the operator must not miss: they are sent at once and retried. */
function isImportant(report: ProgressReport): boolean {
  return report.checkpoint !== undefined || report.outputs !== undefined || report.backend !== undefined || report.warning !== undefined;
}
