import type { Command } from "commander";
import type { FineTuneJob } from "../../api/index.ts";
import { isNotFound } from "../../kube/client.ts";
import { action, connect, explain, getJob, jobsPath, UserError, withClusterFlags, type Cluster, type ClusterFlags } from "../cluster.ts";
import { parseDuration } from "../follow.ts";

/** `kubetune suspend`, `resume` and `cancel`: the three ways to change a running job's course. */
export function registerLifecycle(program: Command): void {
  withClusterFlags(
    program
      .command("suspend")
      .description("Hold a job: the trainer saves a checkpoint and stops, and the GPU is freed (sets spec.runPolicy.suspend).")
      .argument("<job>", "name of the FineTuneJob"),
  )
    .addHelpText("after", "\nExamples:\n  $ kubetune suspend quickstart\n  $ kubetune suspend tune-llama -n team-a   # later: kubetune resume tune-llama -n team-a")
    .action(action(async (name: string, flags: ClusterFlags) => setSuspend(connect(flags), name, true)));

  withClusterFlags(
    program
      .command("resume")
      .description("Continue a suspended job from its last checkpoint (clears spec.runPolicy.suspend).")
      .argument("<job>", "name of the FineTuneJob"),
  )
    .addHelpText("after", "\nExamples:\n  $ kubetune resume quickstart")
    .action(action(async (name: string, flags: ClusterFlags) => setSuspend(connect(flags), name, false)));

  withClusterFlags(
    program
      .command("cancel")
      .description(
        "Stop a job for good and delete it, as kubectl delete ftj does: its trainer saves a checkpoint first, and what the job wrote to S3 stays. To stop and continue later, use suspend.",
      )
      .argument("<job>", "name of the FineTuneJob")
      .option("--no-wait", "return at once instead of waiting until the trainer has stopped and the job is gone")
      .option("--timeout <duration>", "how long to wait for that", "10m"),
  )
    .addHelpText("after", "\nExamples:\n  $ kubetune cancel quickstart\n  $ kubetune cancel tune-llama -n team-a --no-wait")
    .action(action(async (name: string, flags: ClusterFlags & { wait: boolean; timeout: string }) => cancel(connect(flags), name, flags.wait, parseDuration(flags.timeout))));
}

async function setSuspend(cluster: Cluster, name: string, suspend: boolean): Promise<void> {
  const job = await getJob(cluster, name);
  const phase = job.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") throw new UserError(`finetunejob "${name}" has already ${phase === "Succeeded" ? "succeeded" : "failed"}; there is nothing to ${suspend ? "suspend" : "resume"}`);
  if (Boolean(job.spec?.runPolicy?.suspend) === suspend) {
    console.log(`finetunejob.kubetune.io/${name} is already ${suspend ? "suspended" : "not suspended"}`);
    return;
  }
  try {
    await cluster.client.patch<FineTuneJob>(jobsPath(cluster.namespace, name), { spec: { runPolicy: { suspend } } });
  } catch (error) {
    throw await explain(error, cluster, name);
  }
  const checkpoint = job.status?.lastCheckpoint;
  console.log(
    suspend
      ? `finetunejob.kubetune.io/${name} suspended: the trainer saves a checkpoint and stops; kubetune resume ${name} continues from it`
      : `finetunejob.kubetune.io/${name} resumed${checkpoint ? ` from the checkpoint at step ${checkpoint.step} or a newer one` : ""}`,
  );
}

async function cancel(cluster: Cluster, name: string, wait: boolean, timeoutMs: number): Promise<void> {
  const job = await getJob(cluster, name);
  try {
    // Foreground, as `kubectl delete --cascade=foreground`: the job stays (being deleted) until the garbage collector
    // has deleted its pods, which name it with blockOwnerDeletion, so waiting for it to go waits for the trainer's
    // checkpoint too.
    await cluster.client.delete(jobsPath(cluster.namespace, name), { propagationPolicy: "Foreground" });
  } catch (error) {
    throw await explain(error, cluster, name);
  }
  const checkpoints = job.status?.lastCheckpoint?.uri.replace(/\/[^/]+\/?$/, "");
  const kept = [checkpoints ? `its checkpoints in ${checkpoints}` : "", job.status?.outputs?.uri ? `its outputs in ${job.status.outputs.uri}` : ""].filter(Boolean);
  const keeps = kept.length ? `; ${kept.join(" and ")} stay` : "";
  if (!wait) {
    console.log(`finetunejob.kubetune.io/${name} cancelled: it is being deleted${keeps}`);
    return;
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await cluster.client.get(jobsPath(cluster.namespace, name));
    } catch (error) {
      if (isNotFound(error)) break;
      throw await explain(error, cluster, name);
    }
    if (Date.now() > deadline) throw new UserError(`finetunejob "${name}" is still being deleted after ${Math.round(timeoutMs / 1000)}s: its trainer may still be saving a checkpoint; kubectl describe ftj ${name} -n ${cluster.namespace} shows what holds it`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  console.log(`finetunejob.kubetune.io/${name} cancelled and deleted${keeps}`);
}
