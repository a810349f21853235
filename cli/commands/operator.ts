import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { startOperator } from "../../operator/operator.ts";

// Image defaults carry the operator's own version, from package.json (npm_package_version exists only under `npm run`).
const version = (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;

export function registerOperator(program: Command): void {
  program
    .command("operator")
    .description("Run the kubetune operator: reconcile FineTuneJobs into trainer pods.")
    .addHelpText(
      "after",
      "\nExamples:\n  $ kubetune operator --kubeconfig ~/.kube/config --progress-tls-cert tls.crt --progress-tls-key tls.key --progress-url https://my-host:8443\n\nThe Helm chart runs it with every flag: helm/kubetune/templates/deployment.yaml.",
    )
    .option("--kubeconfig <file>", "kubeconfig to use; in-cluster config or $KUBECONFIG when unset")
    .option("--namespaces <list>", "comma-separated namespaces to watch; all when unset", "")
    .option("--probe-address <host:port>", "address of /healthz, /readyz and /metrics", "0.0.0.0:8080")
    .option("--progress-address <host:port>", "address of the HTTPS progress endpoint", "0.0.0.0:8443")
    .option("--progress-url <url>", "the progress endpoint's URL as trainer pods reach it", "https://kubetune-operator.kubetune-system.svc:8443")
    .requiredOption("--progress-tls-cert <file>", "certificate of the progress endpoint")
    .requiredOption("--progress-tls-key <file>", "private key of the progress endpoint")
    .option("--progress-ca <file>", "CA certificate trainers use to verify the progress endpoint")
    .option("--progress-token-key-file <file>", "key progress tokens are derived from; share it between replicas")
    .option("--leader-elect", "elect a leader on a Lease so that only one replica acts", false)
    .option("--leader-election-namespace <ns>", "namespace of the Lease", "kubetune-system")
    .option("--leader-election-id <name>", "name of the Lease", "kubetune-operator")
    .option("--trainer-image-cpu <image>", "trainer image of jobs without GPUs that set no spec.trainer.image", `ghcr.io/kubetune/kubetune-trainer-cpu:${version}`)
    .option("--trainer-image-gpu <image>", "trainer image of GPU jobs (resources.gpus > 0 or trainer.backend gpu) that set no spec.trainer.image", `ghcr.io/kubetune/kubetune-trainer-gpu:${version}`)
    .option("--preflight-image <image>", "image of preflight pods, which need no TensorFlow (the operator's own)", `ghcr.io/kubetune/kubetune-operator:${version}`)
    .option("--image-pull-policy <policy>", "imagePullPolicy of trainer pods")
    .option("--concurrency <n>", "jobs reconciled at once", "4")
    .option("--no-preflight", "skip the CPU-only preflight pod")
    .option("--image-pull-timeout <seconds>", "fail a job whose image does not pull within this time", "300")
    .option("--unschedulable-timeout <seconds>", "fail a job whose pod is not scheduled within this time", "600")
    .option("--retry-backoff <seconds>", "delay before the first retry; doubles each time", "10")
    .option("--termination-grace <seconds>", "seconds a trainer gets to checkpoint after SIGTERM", "300")
    .option("--default-s3-endpoint <url>", "S3 endpoint for jobs that set none (e.g. an in-cluster MinIO)")
    .option("--default-s3-region <region>", "S3 region for jobs that set none")
    .action(async (flags: Record<string, string | boolean | undefined>) => {
      const seconds = (name: string) => Number(flags[name]);
      const operator = await startOperator({
        kubeconfig: flags.kubeconfig as string | undefined,
        namespaces: String(flags.namespaces ?? "").split(",").filter(Boolean),
        probeAddress: String(flags.probeAddress),
        progressAddress: String(flags.progressAddress),
        progressTls: { certFile: String(flags.progressTlsCert), keyFile: String(flags.progressTlsKey) },
        progressTokenKeyFile: flags.progressTokenKeyFile as string | undefined,
        leaderElection: { enabled: Boolean(flags.leaderElect), namespace: String(flags.leaderElectionNamespace), name: String(flags.leaderElectionId) },
        concurrency: Number(flags.concurrency),
        settings: {
          defaultImage: String(flags.trainerImageCpu),
          gpuImage: String(flags.trainerImageGpu),
          preflightImage: String(flags.preflightImage),
          imagePullPolicy: flags.imagePullPolicy as "Always" | "IfNotPresent" | "Never" | undefined,
          progressUrl: String(flags.progressUrl),
          progressCa: flags.progressCa ? readFileSync(String(flags.progressCa), "utf8") : undefined,
          defaultStorage: flags.defaultS3Endpoint || flags.defaultS3Region ? { endpoint: flags.defaultS3Endpoint as string | undefined, region: flags.defaultS3Region as string | undefined, forcePathStyle: flags.defaultS3Endpoint ? true : undefined } : undefined,
          terminationGraceSeconds: seconds("terminationGrace"),
          preflight: flags.preflight !== false,
          imagePullTimeoutSeconds: seconds("imagePullTimeout"),
          unschedulableTimeoutSeconds: seconds("unschedulableTimeout"),
          retryBackoffBaseSeconds: seconds("retryBackoff"),
          retryBackoffMaxSeconds: 300,
        },
      });
      console.log(`kubetune operator: probes on :${operator.probePort}, progress on :${operator.progressPort}`);
      const shutdown = (signal: string) => {
        console.log(`kubetune operator: ${signal}, shutting down`);
        void operator.stop().then(() => process.exit(0));
      };
      process.once("SIGTERM", () => shutdown("SIGTERM"));
      process.once("SIGINT", () => shutdown("SIGINT"));
    });
}
