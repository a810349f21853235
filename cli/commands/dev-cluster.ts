import { Command } from "commander";
import { devClusterDown, devClusterServe, devClusterStatus, devClusterUp } from "../../localcluster/dev-cluster.ts";

export function registerDevCluster(program: Command): void {
  const devCluster = program
    .command("dev-cluster")
    .description("A whole kubetune installation on loopback: kube-apiserver + etcd, MinIO, the operator and a local pod runner.");
  devCluster
    .command("up")
    .description('start it in the background and print shell exports: eval "$(kubetune dev-cluster up)"')
    .action(async () => {
      process.stdout.write(await devClusterUp());
    });
  devCluster
    .command("down")
    .description("stop everything dev-cluster up started")
    .action(async () => console.error(await devClusterDown()));
  devCluster
    .command("status")
    .description("say whether a dev cluster is running")
    .action(() => console.log(devClusterStatus()));
  devCluster.addCommand(
    new Command("serve")
      .description("run the dev cluster in the foreground (what up starts in the background)")
      .requiredOption("--dir <dir>", "folder for its data, logs and state")
      .action(async (flags: { dir: string }) => devClusterServe(flags.dir)),
    { hidden: true },
  );
}
