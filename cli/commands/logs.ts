import type { Command } from "commander";
import type { FineTuneJob } from "../../api/index.ts";
import { ApiError, isNotFound, resourcePath } from "../../kube/client.ts";
import { preflightPodName, trainerPodName } from "../../operator/finetunejob/pods.ts";
import { action, connect, explain, getJob, jobsPath, UserError, withClusterFlags, type Cluster, type ClusterFlags } from "../cluster.ts";
import { mainCondition } from "../display.ts";

interface LogsFlags extends ClusterFlags {
  follow?: boolean;
  attempt?: string;
  preflight?: boolean;
  tail?: string;
}

export function registerLogs(program: Command): void {
  withClusterFlags(
    program
      .command("logs")
      .description("Print the trainer log of a job's current attempt (the pod <job>-train-<attempt>); with -f, follow it, and the attempts after it, until the job ends.")
      .argument("<job>", "name of the FineTuneJob")
      .option("-f, --follow", "stream the log as it grows, wait for a trainer that has not started, and go on with retries until the job finishes")
      .option("--attempt <n>", "an earlier attempt's log, while its pod exists")
      .option("--preflight", "the preflight pod's log instead (it checks the model and data before training)")
      .option("--tail <lines>", "only the last lines"),
  )
    .addHelpText(
      "after",
      `
Examples:
  $ kubetune logs quickstart -f
  $ kubetune logs tune-llama -n team-a --attempt 1 --tail 50

The same log is in kubectl logs <job>-train-<attempt>; JSON lines are the trainer's progress events.`,
    )
    .action(action(async (name: string, flags: LogsFlags) => logs(connect(flags), name, flags)));
}

async function logs(cluster: Cluster, name: string, flags: LogsFlags): Promise<void> {
  let job = await getJob(cluster, name);
  if (flags.preflight) return void (await printPod(cluster, preflightPodName(name), "preflight", flags));
  let attempt = flags.attempt !== undefined ? Number(flags.attempt) : (job.status?.attempts ?? 0);
  if (!Number.isInteger(attempt) || attempt < 0) throw new UserError(`--attempt ${flags.attempt}: must be a whole number of 1 or more`);
  for (;;) {
    if (attempt === 0) {
      if (!flags.follow) {
        const why = mainCondition(job);
        throw new UserError(`finetunejob "${name}" has no trainer pod yet (${job.status?.phase ?? "Pending"}${why ? `: ${why.reason}` : ""}); --preflight shows the preflight's log, -f waits for the trainer`);
      }
      job = await nextAttempt(cluster, name, 0);
      attempt = job.status?.attempts ?? 0;
      if (attempt === 0) return;
    }
    await printPod(cluster, trainerPodName(name, attempt), "trainer", flags);
    if (!flags.follow || flags.attempt !== undefined) return;
    job = await nextAttempt(cluster, name, attempt);
    if ((job.status?.attempts ?? 0) <= attempt) return;
    attempt = job.status!.attempts!;
    console.error(`--- attempt ${attempt} (pod ${trainerPodName(name, attempt)}) ---`);
  }
}

/** Waits until the job starts an attempt after `after`, or finishes (or is deleted: then it has no attempts). */
async function nextAttempt(cluster: Cluster, name: string, after: number): Promise<FineTuneJob> {
  for (;;) {
    let job: FineTuneJob;
    try {
      job = await cluster.client.get<FineTuneJob>(jobsPath(cluster.namespace, name));
    } catch (error) {
      if (isNotFound(error)) return { metadata: { name } } as FineTuneJob;
      throw await explain(error, cluster, name);
    }
    const phase = job.status?.phase;
    if ((job.status?.attempts ?? 0) > after || phase === "Succeeded" || phase === "Failed") return job;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

/** Streams one pod's log to stdout; with follow, waits for a container that is still starting. */
async function printPod(cluster: Cluster, pod: string, container: string, flags: LogsFlags): Promise<void> {
  const path = resourcePath({ group: "", version: "v1", plural: "pods", namespace: cluster.namespace, name: pod, subresource: "log" });
  const query = { container, follow: flags.follow === true, ...(flags.tail !== undefined ? { tailLines: Number(flags.tail) } : {}) };
  for (;;) {
    try {
      const response = await cluster.client.stream(path, query);
      for await (const chunk of response) process.stdout.write(chunk as Buffer);
      return;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        throw new UserError(`pod ${pod} is gone, and its log with it (the operator deletes a job's pods with the job; kubectl get pods -n ${cluster.namespace} -l kubetune.io/job-name lists those left)`);
      }
      const starting = error instanceof ApiError && error.status === 400 && /waiting to start|ContainerCreating|PodInitializing|does not have a host assigned/.test(error.message);
      if (!(starting && flags.follow)) throw await explain(error, cluster);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}
