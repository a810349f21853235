import { Command } from "commander";
import { checkGpus, devClusterDown, devClusterServe, devClusterStatus, devClusterUp } from "../../localcluster/dev-cluster.ts";

export function registerDevCluster(program: Command): void {
  const devCluster = program
    .command("dev-cluster")
    .description("A whole kubetune installation on loopback: kube-apiserver + etcd, MinIO, the operator and a local pod runner.")
    .addHelpText(
      "after",
      `
Examples:
  $ eval "$(npx kubetune dev-cluster up)"               # operator in the supervisor process
  $ eval "$(npx kubetune dev-cluster up --from-chart)"  # operator as the Helm chart installs it
  $ eval "$(npx kubetune dev-cluster up --gpus 1)"      # a node with one (simulated) GPU
  $ npx kubetune submit examples/dev-cluster/quickstart.yaml --wait
  $ npx kubetune dev-cluster down`,
    );
  devCluster
    .command("up")
    .description('start it in the background and print shell exports: eval "$(kubetune dev-cluster up)"')
    .option("--from-chart", "install the operator from helm/kubetune (rendered by helm, its Deployment run as a pod, under its ServiceAccount and RBAC, with its flags)")
    .option(
      "--gpus <n>",
      "nvidia.com/gpu the node advertises, for GPU jobs and FineTuneQueue quotas (docs/queues.md); simulated: their trainers compute on the CPU",
      "0",
    )
    .addHelpText("after", '\nExamples:\n  $ eval "$(npx kubetune dev-cluster up)"\n  $ eval "$(npx kubetune dev-cluster up --from-chart)"\n  $ eval "$(npx kubetune dev-cluster up --gpus 2)"')
    .action(async (flags: { fromChart?: boolean; gpus: string }, command: Command) => {
      let gpus: number;
      try {
        gpus = checkGpus(Number(flags.gpus));
      } catch (error) {
        return command.error(`error: ${(error as Error).message}`, { exitCode: 2 });
      }
      process.stdout.write(await devClusterUp({ fromChart: flags.fromChart === true, gpus }));
    });
  devCluster
    .command("down")
    .description("stop everything dev-cluster up started")
    .addHelpText("after", "\nExamples:\n  $ npx kubetune dev-cluster down")
    .action(async () => console.error(await devClusterDown()));
  devCluster
    .command("status")
    .description("say whether a dev cluster is running")
    .addHelpText("after", "\nExamples:\n  $ npx kubetune dev-cluster status")
    .action(() => console.log(devClusterStatus()));
  devCluster.addCommand(
    new Command("serve")
      .description("run the dev cluster in the foreground (what up starts in the background)")
      .requiredOption("--dir <dir>", "folder for its data, logs and state")
      .option("--from-chart", "run the operator from the Helm chart")
      .option("--gpus <n>", "nvidia.com/gpu the node advertises", "0")
      .action(async (flags: { dir: string; fromChart?: boolean; gpus: string }) => devClusterServe(flags.dir, { fromChart: flags.fromChart === true, gpus: Number(flags.gpus) })),
    { hidden: true },
  );
}
