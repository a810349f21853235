import type { Command } from "commander";
import { stringify } from "yaml";
import type { FineTuneJob } from "../../api/index.ts";
import { action, connect, explain, jobsPath, withClusterFlags, type ClusterFlags } from "../cluster.ts";
import { jobTable } from "../display.ts";

interface ListFlags extends ClusterFlags {
  allNamespaces?: boolean;
  output?: string;
}

export function registerList(program: Command): void {
  withClusterFlags(
    program
      .command("list")
      .alias("ls")
      .description("List FineTuneJobs with their phase, method, progress, loss and ETA, as kubectl get ftj does.")
      .option("-A, --all-namespaces", "jobs of every namespace")
      .option("-o, --output <format>", "name (one name per line), json or yaml"),
  )
    .addHelpText(
      "after",
      `
Examples:
  $ kubetune list
  $ kubetune list -n team-a
  $ kubetune list -A -o name`,
    )
    .action(
      action(async (flags: ListFlags) => {
        const cluster = connect(flags);
        let jobs: FineTuneJob[];
        try {
          jobs = (await cluster.client.list<FineTuneJob>(jobsPath(flags.allNamespaces ? undefined : cluster.namespace))).items;
        } catch (error) {
          throw await explain(error, cluster);
        }
        jobs.sort((a, b) => `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
        if (flags.output === "name") return void jobs.forEach((job) => console.log(job.metadata.name));
        if (flags.output === "json") return void console.log(JSON.stringify({ apiVersion: "v1", kind: "List", items: jobs }, null, 2));
        if (flags.output === "yaml") return void process.stdout.write(stringify({ apiVersion: "v1", kind: "List", items: jobs }));
        if (jobs.length === 0) {
          console.error(flags.allNamespaces ? "No FineTuneJobs found." : `No FineTuneJobs found in ${cluster.namespace} namespace.`);
          return;
        }
        console.log(jobTable(jobs, new Date(), flags.allNamespaces === true));
      }),
    );
}
