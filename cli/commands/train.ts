import { existsSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { applyDefaults, formatProblem, validate, type FineTuneJobSpec } from "../../api/index.ts";
import { ProgressReporter } from "../../trainer/progress/reporter.ts";
import { EXIT_CODE, type JobError, type RunJobResult } from "../../trainer/run.ts";
import type { ProgressEvent } from "../../trainer/train/progress.ts";
import { formatEventJson, loadManifest, runWithSignals, type ProgressDisplay } from "./run.ts";

/**
 * `kubetune train`: what the trainer pod runs. The job comes from KUBETUNE_JOB_SPEC, the
 * defaulted spec as JSON, which the operator sets (or from a manifest file, for debugging).
 * It logs one JSON object per line on stdout (the format of `kubetune run --json`), sends
 * progress to the operator when KUBETUNE_PROGRESS_URL and _TOKEN_FILE are set, and on failure ends
 * with one plain `Reason: message` line, also written to /dev/termination-log, which the
 * operator reads as the failure's reason. Exit codes: 0 done, 75 stopped with a checkpoint
 * (SIGTERM), 1 failed.
 */
export const JOB_SPEC_ENV = "KUBETUNE_JOB_SPEC";
const TERMINATION_LOG = "/dev/termination-log";

export function registerTrain(program: Command): void {
  program
    .command("train")
    .description(`Train the job in $${JOB_SPEC_ENV} (or FILE) as the trainer pod does, logging JSON lines; resumes from the newest checkpoint.`)
    .addHelpText("after", `\nExamples:\n  $ kubetune train examples/quickstart.yaml      # what a trainer pod runs, on a manifest\n  $ ${JOB_SPEC_ENV}='{...}' kubetune train   # as the operator starts it`)
    .argument("[file]", `a FineTuneJob manifest; $${JOB_SPEC_ENV} (the spec as JSON) when omitted`)
    .action(async (file: string | undefined) => {
      const display = new PodLog(ProgressReporter.fromEnv(process.env, (message) => console.log(formatEventJson({ event: "log", message }))));
      const job = await readJob(file, process.env);
      if ("problems" in job) {
        display.invalid(job.problems);
        process.exitCode = EXIT_CODE.failed;
        return;
      }
      const code = await runWithSignals(applyDefaults(job.spec), { baseDir: job.baseDir, display });
      await display.flush();
      process.exitCode = code;
    });
}

/** The job's spec and the folder its relative paths start from, or what is wrong with it. */
export async function readJob(file: string | undefined, env: NodeJS.ProcessEnv): Promise<{ spec: FineTuneJobSpec; baseDir: string } | { problems: string[] }> {
  if (file !== undefined) {
    const loaded = await loadManifest(file);
    return "problems" in loaded ? loaded : { spec: loaded.job.spec, baseDir: path.dirname(path.resolve(file)) };
  }
  const text = env[JOB_SPEC_ENV];
  if (!text) return { problems: [`no job: pass a manifest file or set ${JOB_SPEC_ENV} to the job's spec as JSON`] };
  let spec: unknown;
  try {
    spec = JSON.parse(text);
  } catch (error) {
    return { problems: [`${JOB_SPEC_ENV} is not valid JSON (${(error as Error).message})`] };
  }
  const problems = validate({ apiVersion: "kubetune.io/v1alpha1", kind: "FineTuneJob", metadata: { name: env.KUBETUNE_JOB_NAME ?? "job" }, spec });
  if (problems.length > 0) return { problems: problems.map(formatProblem) };
  return { spec: spec as FineTuneJobSpec, baseDir: process.cwd() };
}

/** JSON lines on stdout, and the same progress to the operator. */
class PodLog implements ProgressDisplay {
  /** The newest step, which a warning report carries (a report's step is required). */
  private step = 0;

  constructor(private readonly reporter: ProgressReporter | undefined) {}

  event(event: ProgressEvent): void {
    console.log(formatEventJson(event));
    if (event.event === "step") {
      const { step, totalSteps, epoch, loss, evalLoss, learningRate, tokensPerSecond, etaSeconds } = event;
      this.reporter?.report({
        ...{ step, totalSteps, epoch, loss, ...(evalLoss !== undefined ? { evalLoss } : {}), learningRate, tokensPerSecond, etaSeconds },
        ...(event.preference ? { preference: event.preference } : {}),
        ...(event.evalAccuracy !== undefined ? { evalAccuracy: event.evalAccuracy } : {}),
      });
    } else if (event.event === "checkpoint") {
      this.reporter?.report({ step: event.step, checkpoint: { step: event.step, uri: event.uri } });
    } else if (event.event === "backend") {
      this.reporter?.report({ step: 0, backend: { name: event.name, device: event.device, description: event.description, reason: event.reason } });
    } else if (event.event === "warning") {
      // The operator records it as a Warning Event on the job, where kubectl describe shows it.
      this.reporter?.report({ step: this.step, warning: { reason: event.reason, message: event.message } });
    }
    if (event.event === "step" || event.event === "start") this.step = event.step;
  }

  note(message: string): void {
    console.log(formatEventJson({ event: "log", message }));
  }

  sample(sample: { prompt: string; base: string; adapter: string }): void {
    console.log(formatEventJson({ event: "sample", ...sample }));
  }

  failure(error: JobError): void {
    console.log(formatEventJson({ event: "error", reason: error.reason, message: error.message }));
    terminate(`${error.reason}: ${error.message.split("\n").join("; ")}`);
  }

  invalid(problems: string[]): void {
    console.log(formatEventJson({ event: "error", reason: "InvalidSpec", message: problems.join("; ") }));
    terminate(`InvalidSpec: ${problems.join("; ")}`);
  }

  finish(result: RunJobResult): void {
    if (result.status !== "completed") return;
    const { outputs, metrics } = result;
    this.reporter?.report({ step: metrics.steps, totalSteps: metrics.totalSteps, outputs });
  }

  async flush(): Promise<void> {
    await this.reporter?.flush();
  }
}

/** The last log line, and the kubelet's termination message when the file exists (in a pod). */
function terminate(line: string): void {
  console.error(line);
  if (existsSync(TERMINATION_LOG)) {
    try {
      writeFileSync(TERMINATION_LOG, `${line}\n`);
    } catch {
      // Read-only or not ours: the log line above still carries the reason.
    }
  }
}
