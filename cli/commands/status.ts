import type { Command } from "commander";
import { stringify } from "yaml";
import { KIND } from "../../api/index.ts";
import { ApiError, resourcePath } from "../../kube/client.ts";
import { action, connect, explain, getJob, withClusterFlags, type Cluster, type ClusterFlags } from "../cluster.ts";
import { describeJob } from "../display.ts";

interface CoreEvent {
  type?: string;
  reason?: string;
  message?: string;
  lastTimestamp?: string;
  eventTime?: string;
}

export function registerStatus(program: Command): void {
  withClusterFlags(
    program
      .command("status")
      .description("Show a job: phase and why, progress, a loss sparkline, throughput, the last checkpoint, outputs and what loads them, conditions and recent events.")
      .argument("<job>", "name of the FineTuneJob")
      .option("-o, --output <format>", "json or yaml: the whole object instead"),
  )
    .addHelpText(
      "after",
      `
Examples:
  $ kubetune status quickstart
  $ kubetune status tune-llama -n team-a -o yaml`,
    )
    .action(
      action(async (name: string, flags: ClusterFlags & { output?: string }) => {
        const cluster = connect(flags);
        const job = await getJob(cluster, name);
        if (flags.output === "json") return void console.log(JSON.stringify(job, null, 2));
        if (flags.output === "yaml") return void process.stdout.write(stringify(job));
        console.log(describeJob(job, new Date(), await recentEvents(cluster, name)));
      }),
    );
}

/** The job's newest events, oldest first, as kubectl describe shows them. */
async function recentEvents(cluster: Cluster, name: string, count = 8): Promise<CoreEvent[]> {
  try {
    const events = await cluster.client.list<CoreEvent>(resourcePath({ group: "", version: "v1", plural: "events", namespace: cluster.namespace }), {
      fieldSelector: `involvedObject.name=${name},involvedObject.kind=${KIND}`,
    });
    const time = (event: CoreEvent) => Date.parse(event.lastTimestamp ?? event.eventTime ?? "") || 0;
    return events.items.sort((a, b) => time(a) - time(b)).slice(-count);
  } catch (error) {
    // Events are a courtesy: a user who may read jobs but not events still gets the rest.
    if (error instanceof ApiError && error.status === 403) return [];
    throw await explain(error, cluster);
  }
}
