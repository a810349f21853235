import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { parseAllDocuments } from "yaml";
import { KIND, type FineTuneJob } from "../../api/index.ts";
import { ApiError, isNotFound } from "../../kube/client.ts";
import { action, connect, explain, jobsPath, UserError, withClusterFlags, type Cluster, type ClusterFlags } from "../cluster.ts";
import { columns, mainCondition, progressSummary } from "../display.ts";
import { followJob, parseDuration } from "../follow.ts";
import { formatProblems, validateFiles } from "./validate.ts";

/** The field manager of kubetune's server-side applies, as kubectl's is "kubectl". */
export const FIELD_MANAGER = "kubetune";

interface SubmitFlags extends ClusterFlags {
  wait?: boolean;
  timeout?: string;
  forceConflicts?: boolean;
}

export function registerSubmit(program: Command): void {
  withClusterFlags(
    program
      .command("submit")
      .description("Validate FineTuneJob manifests and apply them to the cluster (server-side apply); with --wait, follow them and exit with their outcome.")
      .argument("<files...>", "FineTuneJob manifests (YAML, several documents allowed, or JSON)")
      .option("-w, --wait", "follow the jobs with a progress bar until they finish; exit 0 if all succeeded, 1 otherwise")
      .option("--timeout <duration>", "with --wait, give up after this long (e.g. 30m, 2h); the jobs go on")
      .option("--force-conflicts", "take over fields another field manager set (as kubectl apply --server-side --force-conflicts)"),
  )
    .addHelpText(
      "after",
      `
Examples:
  $ kubetune submit examples/dev-cluster/quickstart.yaml --wait
  $ kubetune submit job.yaml -n team-a --wait --timeout 2h

A manifest that names a namespace is applied there; -n applies the others to that namespace.
Exit codes with --wait: 0 every job Succeeded, 1 a job Failed (its reason is printed) or the
timeout passed.`,
    )
    .action(action(async (files: string[], flags: SubmitFlags) => submit(files, flags)));
}

async function submit(files: string[], flags: SubmitFlags): Promise<number> {
  const report = await validateFiles(files);
  if (!report.valid) {
    for (const line of formatProblems(report)) console.error(line);
    throw new UserError(`nothing was applied: ${report.documents.filter((document) => !document.valid).length} invalid document(s); kubetune validate ${files.join(" ")} checks them`);
  }
  const jobs = (await Promise.all(files.map(readJobs))).flat();
  if (jobs.length === 0) throw new UserError(`${files.join(", ")} hold no ${KIND}`);
  const timeoutMs = flags.timeout === undefined ? undefined : parseDuration(flags.timeout);
  const cluster = connect(flags);
  const applied: Cluster[] = [];
  for (const job of jobs) {
    const namespace = job.metadata.namespace ?? cluster.namespace;
    if (flags.namespace !== undefined && job.metadata.namespace !== undefined && job.metadata.namespace !== flags.namespace) {
      throw new UserError(`${job.metadata.name}: the manifest's namespace "${job.metadata.namespace}" differs from -n ${flags.namespace}`);
    }
    const target = { ...cluster, namespace };
    console.log(`finetunejob.kubetune.io/${job.metadata.name} ${await apply(target, job, flags.forceConflicts === true)}`);
    applied.push(target);
  }
  if (!flags.wait) return 0;
  const single = jobs.length === 1 && process.stderr.isTTY;
  const outcomes = await Promise.all(jobs.map((job, index) => wait(applied[index]!, job.metadata.name!, single, timeoutMs)));
  return outcomes.every((phase) => phase === "Succeeded") ? 0 : 1;
}

async function readJobs(file: string): Promise<FineTuneJob[]> {
  const text = await readFile(file, "utf8");
  const documents = file.endsWith(".json") ? [JSON.parse(text) as unknown] : parseAllDocuments(text).map((document) => document.toJS() as unknown);
  return documents.filter((document): document is FineTuneJob => (document as { kind?: string } | null)?.kind === KIND);
}

/** Server-side apply; says whether the job was created, changed or left as it was. */
async function apply(cluster: Cluster, job: FineTuneJob, force: boolean): Promise<string> {
  const name = job.metadata.name!;
  const path = jobsPath(cluster.namespace, name);
  try {
    const before = await cluster.client.get<FineTuneJob>(path).catch((error: unknown) => {
      if (isNotFound(error)) return undefined;
      throw error;
    });
    const body = { ...job, metadata: { ...job.metadata, namespace: cluster.namespace } };
    const after = await cluster.client.patch<FineTuneJob>(path, body, "apply", { fieldManager: FIELD_MANAGER, force });
    if (!before) return "created";
    return after.metadata.resourceVersion === before.metadata.resourceVersion ? "unchanged" : "configured";
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) throw new UserError(`${error.message.replace(/^[A-Z]+ \S+: 409 /, "")}; rerun with --force-conflicts to take these fields over`);
    throw await explain(error, cluster);
  }
}

/** Follows one job to its end; returns its final phase. */
async function wait(cluster: Cluster, name: string, bar: boolean, timeoutMs: number | undefined): Promise<string> {
  let lastLine = "";
  let lastPhase = "";
  const out = process.stderr;
  const show = (job: FineTuneJob) => {
    const phase = job.status?.phase ?? "Pending";
    if (bar) {
      if (phase !== lastPhase) {
        const why = mainCondition(job);
        out.write(`\r\x1b[K${name}: ${phase}${why ? ` (${why.reason}: ${why.message})` : ""}\n`);
        lastPhase = phase;
      }
      out.write(`\r\x1b[K${barLine(job, out.columns ?? 80)}`);
      return;
    }
    const line = `${name}: ${progressSummary(job)}`;
    if (line !== lastLine) console.error(line);
    lastLine = line;
  };
  let job: FineTuneJob;
  try {
    job = await followJob(cluster, name, show, timeoutMs);
  } catch (error) {
    if (bar) out.write("\r\x1b[K");
    throw await explain(error, cluster, name);
  }
  if (bar) out.write("\r\x1b[K");
  const phase = job.status?.phase ?? "";
  const why = mainCondition(job);
  if (phase === "Succeeded") {
    const outputs = job.status?.outputs;
    console.log(`finetunejob.kubetune.io/${name} Succeeded${outputs?.uri ? `: outputs in ${outputs.uri}${outputs.loadableBy?.length ? ` (loads in ${outputs.loadableBy.join(", ")})` : ""}` : ""}`);
  } else {
    console.error(`finetunejob.kubetune.io/${name} ${phase}: ${why ? `${why.reason}: ${why.message}` : "no reason given"}`);
  }
  return phase;
}

/** quickstart  step 50/200 [######..................] 25%  loss 0.4225  ETA 1m13s */
export function barLine(job: FineTuneJob, width: number): string {
  const progress = job.status?.progress;
  const shown = columns(job);
  const share = progress?.totalSteps ? Math.min(1, (progress.step ?? 0) / progress.totalSteps) : 0;
  const text = [progress?.step !== undefined ? `step ${progress.step}/${progress.totalSteps ?? "?"}` : job.status?.phase ?? "Pending", shown.loss ? `loss ${shown.loss}` : "", shown.eta ? `ETA ${shown.eta}` : ""].filter(Boolean);
  const size = Math.max(10, Math.min(30, width - text.join("  ").length - 12));
  const filled = Math.round(share * size);
  return `${text[0]} [${"#".repeat(filled)}${".".repeat(size - filled)}] ${shown.progress || "0%"}  ${text.slice(1).join("  ")}`.trimEnd();
}
