import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Command } from "commander";
import { parseAllDocuments } from "yaml";
import { applyDefaults, type DefaultedFineTuneJobSpec, type FineTuneJob } from "../../api/index.ts";
import { EXIT_CODE, runFineTuneJob, toJobError, type JobError, type RunJobResult } from "../../trainer/run.ts";
import type { ProgressEvent } from "../../trainer/train/progress.ts";
import { formatProblems, validateFiles } from "./validate.ts";

/**
 * `kubetune run FILE`: runs a FineTuneJob on this machine, with the manifest's relative paths
 * taken from the manifest's folder. On a terminal it draws a one-line progress bar; otherwise
 * (or with --json) it prints one JSON object per progress event on stdout (see formatEventJson).
 */
export function registerRun(program: Command): void {
  program
    .command("run")
    .description("Run a FineTuneJob manifest on this machine, without a cluster; resumes from its newest checkpoint.")
    .addHelpText("after", "\nExamples:\n  $ kubetune run examples/quickstart.yaml --output-dir out/quickstart\n  $ kubetune run job.yaml --json > progress.jsonl")
    .argument("<file>", "a FineTuneJob manifest (YAML or JSON)")
    .option("--output-dir <dir>", "write the outputs (and checkpoints) here instead of spec.output.uri")
    .option("--json", "print one JSON object per progress event on stdout, also on a terminal")
    .option("--sample-prompt <text>", "prompt of the before/after sample; default the first eval example's prompt")
    .option("--no-sample", "skip the before/after sample")
    .action(async (file: string, flags: { outputDir?: string; json?: boolean; samplePrompt?: string; sample: boolean }) => {
      const loaded = await loadManifest(file);
      if ("problems" in loaded) {
        for (const line of loaded.problems) console.error(line);
        process.exitCode = EXIT_CODE.failed;
        return;
      }
      const raw = loaded.job.spec;
      if (flags.outputDir !== undefined) raw.output = { ...raw.output, uri: path.resolve(flags.outputDir) };
      const json = flags.json === true || !process.stdout.isTTY;
      const display = json ? new JsonLines() : new ProgressBar();
      process.exitCode = await runWithSignals(applyDefaults(raw), {
        baseDir: path.dirname(path.resolve(file)),
        display,
        sample: flags.sample,
        ...(flags.samplePrompt !== undefined ? { samplePrompt: flags.samplePrompt } : {}),
      });
    });
}

/** A manifest's one FineTuneJob, or its problems as printable `path: message` lines. */
export async function loadManifest(file: string): Promise<{ job: FineTuneJob } | { problems: string[] }> {
  const report = await validateFiles([file]);
  if (!report.valid) return { problems: formatProblems(report) };
  if (report.documents.length !== 1) {
    return { problems: [`${file}: holds ${report.documents.length} documents; kubetune run takes a file with one FineTuneJob`] };
  }
  const text = await readFile(file, "utf8");
  return { job: parseAllDocuments(text)[0]!.toJS() as FineTuneJob };
}

/** Where progress goes: a terminal bar, or JSON lines. */
export interface ProgressDisplay {
  event(event: ProgressEvent): void;
  /** A line for people (a warning, the stop notice). */
  note(message: string): void;
  sample(sample: { prompt: string; base: string; adapter: string }): void;
  failure(error: JobError): void;
  finish(result: RunJobResult): void;
}

export interface RunWithSignalsOptions {
  baseDir: string;
  display: ProgressDisplay;
  sample?: boolean;
  samplePrompt?: string;
}

/**
 * Runs the job; SIGTERM (and SIGINT) stop it after the current step with a checkpoint, and a
 * second signal exits at once. Returns the exit code: 0 done, 75 stopped with a checkpoint
 * (run again to resume), 1 failed.
 */
export async function runWithSignals(spec: DefaultedFineTuneJobSpec, options: RunWithSignalsOptions): Promise<number> {
  const { display } = options;
  const controller = new AbortController();
  let signalName = "";
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      display.note(`${signal} again: exiting without a checkpoint`);
      process.exit(128 + (signal === "SIGINT" ? 2 : 15));
    }
    signalName = signal;
    display.note(`${signal} received: finishing the current step, then saving a checkpoint`);
    controller.abort();
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  try {
    const result = await runFineTuneJob(spec, {
      baseDir: options.baseDir,
      signal: controller.signal,
      onProgress: (event) => display.event(event),
      ...(options.sample === false ? { sample: false } : {}),
      ...(options.samplePrompt !== undefined ? { samplePrompt: options.samplePrompt } : {}),
    });
    if (result.status === "stopped") {
      display.event({ event: "stopped", step: result.step, totalSteps: result.totalSteps, checkpoint: result.checkpoint, signal: signalName });
      display.note(
        `stopped by ${signalName || "request"} after step ${result.step}/${result.totalSteps}; checkpoint saved to ${result.checkpoint}; run the same command again to resume`,
      );
      display.finish(result);
      return EXIT_CODE.stopped;
    }
    if (result.metrics.sample) display.sample(result.metrics.sample);
    display.finish(result);
    return 0;
  } catch (error) {
    display.failure(toJobError(error));
    return EXIT_CODE.failed;
  } finally {
    process.off("SIGTERM", onSignal);
    process.off("SIGINT", onSignal);
  }
}

/**
 * One JSON object per line on stdout: every ProgressEvent with `time` (ISO 8601) added, then
 * {"event":"sample",prompt,base,adapter}, and on failure {"event":"error",reason,message}.
 */
export function formatEventJson(event: object, time = new Date()): string {
  return JSON.stringify({ time: time.toISOString(), ...event });
}

export class JsonLines implements ProgressDisplay {
  event(event: ProgressEvent): void {
    console.log(formatEventJson(event));
  }

  note(message: string): void {
    console.error(message);
  }

  sample(sample: { prompt: string; base: string; adapter: string }): void {
    console.log(formatEventJson({ event: "sample", ...sample }));
  }

  failure(error: JobError): void {
    console.log(formatEventJson({ event: "error", reason: error.reason, message: error.message }));
    console.error(`${error.reason}: ${error.message}`);
  }

  finish(): void {}
}

/** The terminal display: one line redrawn in place, with events that matter printed above it. */
export class ProgressBar implements ProgressDisplay {
  private line = "";
  private evalLoss: number | undefined;
  private firstLoss: number | undefined;
  private lastLoss: number | undefined;

  constructor(private readonly out: NodeJS.WriteStream = process.stdout) {}

  event(event: ProgressEvent): void {
    switch (event.event) {
      case "backend":
        this.print(`backend: ${event.name} on ${event.description} (${event.reason})`);
        break;
      case "start":
        if (event.resumedFrom && event.step >= event.totalSteps) {
          this.print(`already trained: ${event.resumedFrom} is the last step; writing the outputs again (delete that folder's parent to train anew)`);
          break;
        }
        this.print(
          `${event.resumedFrom ? `resuming from ${event.resumedFrom} (step ${event.step})` : "training"}: ${event.totalSteps} steps on ${event.backend}, ` +
            `${event.trainableParameters.toLocaleString("en-US")} trainable parameters (${percent(event.trainableParameters / event.totalParameters)} of ${event.totalParameters.toLocaleString("en-US")})`,
        );
        break;
      case "step":
        this.firstLoss ??= event.loss;
        this.lastLoss = event.loss;
        this.draw(progressLine(event, this.evalLoss, this.out.columns ?? 100));
        break;
      case "eval":
        this.evalLoss = event.evalLoss;
        this.print(
          `step ${event.step}: eval loss ${event.evalLoss.toFixed(4)}` +
            (event.evalPerplexity !== null ? `, perplexity ${event.evalPerplexity.toFixed(2)}` : "") +
            (event.evalAccuracy !== undefined ? `, accuracy ${event.evalAccuracy.toFixed(3)}` : "") +
            (event.evalPreference ? `, reward accuracy ${event.evalPreference.rewardsAccuracies.toFixed(3)}, margin ${event.evalPreference.rewardsMargins.toFixed(3)}` : ""),
        );
        break;
      case "checkpoint":
        if (event.reason !== "interval") this.print(`checkpoint at step ${event.step}: ${event.uri}`);
        break;
      case "done":
        this.print(
          `done: ${event.step} steps in ${formatSeconds(event.durationSeconds)}` +
            (this.firstLoss !== undefined && this.lastLoss !== undefined ? `, loss ${this.firstLoss.toFixed(3)} -> ${this.lastLoss.toFixed(3)}` : "") +
            `\noutputs in ${event.outputUri}: ${event.files.join(", ")}`,
        );
        break;
      case "warning":
        this.print(`warning: ${event.message} (${event.reason})`);
        break;
      case "stopped":
        break;
    }
  }

  note(message: string): void {
    this.print(message);
  }

  sample(sample: { prompt: string; base: string; adapter: string }): void {
    this.print(`sample (greedy):\n  prompt:  ${JSON.stringify(sample.prompt)}\n  base:    ${JSON.stringify(sample.base)}\n  adapter: ${JSON.stringify(sample.adapter)}`);
  }

  failure(error: JobError): void {
    this.clear();
    console.error(`${error.reason}: ${error.message}`);
  }

  finish(): void {
    this.clear();
  }

  private draw(line: string): void {
    this.line = line;
    this.out.write(`\r${line}\x1b[K`);
  }

  private clear(): void {
    if (this.line) this.out.write("\r\x1b[K");
    this.line = "";
  }

  private print(message: string): void {
    const line = this.line;
    this.clear();
    this.out.write(`${message}\n`);
    if (line) this.draw(line);
  }
}

/** step 12/60 [######........] 20% loss 2.345 eval 2.101 1,234 tok/s ETA 45s */
export function progressLine(progress: { step: number; totalSteps: number; loss: number; tokensPerSecond: number; etaSeconds: number }, evalLoss: number | undefined, columns: number): string {
  const share = progress.totalSteps > 0 ? progress.step / progress.totalSteps : 0;
  const text =
    ` ${Math.round(share * 100)}% loss ${progress.loss.toFixed(3)}` +
    (evalLoss !== undefined ? ` eval ${evalLoss.toFixed(3)}` : "") +
    ` ${Math.round(progress.tokensPerSecond).toLocaleString("en-US")} tok/s ETA ${formatSeconds(progress.etaSeconds)}`;
  const head = `step ${progress.step}/${progress.totalSteps} `;
  const width = Math.max(10, Math.min(30, columns - head.length - text.length - 3));
  const filled = Math.round(share * width);
  return `${head}[${"#".repeat(filled)}${".".repeat(width - filled)}]${text}`;
}

function formatSeconds(totalSeconds: number): string {
  const seconds = Math.max(0, Math.round(totalSeconds));
  const minutes = Math.floor(seconds / 60);
  const hours = Math.floor(minutes / 60);
  if (hours > 0) return `${hours}h${String(minutes % 60).padStart(2, "0")}m`;
  if (minutes > 0) return `${minutes}m${String(seconds % 60).padStart(2, "0")}s`;
  return `${seconds}s`;
}

function percent(share: number): string {
  return `${(share * 100).toPrecision(2)}%`;
}
