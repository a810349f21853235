import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { startOperator } from "../../operator/operator.ts";
// An import, not a read relative to this file: the bundle (dist/operator.mjs) carries it inline.
import packageJson from "../../package.json" with { type: "json" };

// Image defaults carry the operator's own version, from package.json (npm_package_version exists only under `npm run`).
const { version } = packageJson;

export function registerOperator(program: Command): void {
  program
    .command("operator")
    .description("Run the kubetune operator: reconcile FineTuneJobs into trainer pods.")
    .addHelpText(
      "after",
      "\nExamples:\n  $ kubetune operator --kubeconfig ~/.kube/config --progress-tls-cert tls.crt --progress-tls-key tls.key --progress-url https://my-host:8443\n  $ kubetune operator --key-secret kubetune-system/kubetune-operator-keys --key-secret-dir /etc/kubetune/keys\n  $ kubetune operator --key-secret kubetune-system/kubetune-operator-keys --key-secret-dir /etc/kubetune/keys --queues builtin,kueue\n\nThe Helm chart runs it with every flag: helm/kubetune/templates/deployment.yaml.",
    )
    .option("--kubeconfig <file>", "kubeconfig to use; in-cluster config or $KUBECONFIG when unset")
    .option("--namespaces <list>", "comma-separated namespaces to watch; all when unset", "")
    .option("--probe-address <host:port>", "address of /healthz, /readyz and /metrics", "0.0.0.0:8080")
    .option("--progress-address <host:port>", "address of the HTTPS progress endpoint", "0.0.0.0:8443")
    .option("--progress-url <url>", "the progress endpoint's URL as trainer pods reach it", "https://kubetune-operator.kubetune-system.svc:8443")
    .option("--key-secret <namespace/name>", "Secret the operator keeps its progress CA in: created when --key-secret-dir is empty, never read through the API")
    .option("--key-secret-dir <dir>", "where the operator's pod mounts the --key-secret Secret (the kubelet reads it)")
    .option("--progress-cert-hosts <list>", "comma-separated DNS names and IPs the operator's own serving certificate covers besides the --progress-url host", "")
    .option("--progress-tls-cert <file>", "certificate of the progress endpoint, instead of one made from --key-secret's CA (e.g. cert-manager's); reread when it changes")
    .option("--progress-tls-key <file>", "private key of --progress-tls-cert")
    .option("--progress-ca <file>", "CA certificate trainers use to verify --progress-tls-cert")
    .option("--secure-metrics <authorization>", "also serve /metrics on the HTTPS progress port: kubernetes (bearer tokens allowed to get /metrics, checked by TokenReview and SubjectAccessReview) or none (docs/metrics.md)")
    .option("--no-probe-metrics", "do not serve /metrics on the plain-HTTP probe port (use with --secure-metrics)")
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
    .option("--interruption-limit <n>", "evictions and SIGTERM stops in a row without a new checkpoint before a job fails with InterruptedWithoutProgress", "10")
    .option("--termination-grace <seconds>", "seconds a trainer gets to checkpoint after SIGTERM", "300")
    .option("--default-s3-endpoint <url>", "S3 endpoint for jobs that set none (e.g. an in-cluster MinIO)")
    .option("--default-s3-region <region>", "S3 region for jobs that set none")
    .option(
      "--queues <modes>",
      "comma-separated queue controllers to run (docs/queues.md): builtin admits jobs whose spec.queueName is a FineTuneQueue (needs list and watch on the cluster-scoped finetunequeues), kueue makes a Kueue Workload for every other queueName; none when unset, and a job with queueName then waits Queued",
    )
    .action(async (flags: Record<string, string | boolean | undefined>, command: Command) => {
      const seconds = (name: string) => Number(flags[name]);
      let tls: ReturnType<typeof progressTls>;
      let keys: ReturnType<typeof keySecret>;
      let queues: ReturnType<typeof queueModes>;
      try {
        tls = progressTls(flags);
        keys = keySecret(flags);
        queues = queueModes(flags.queues);
      } catch (error) {
        return command.error(`error: ${(error as Error).message}`, { exitCode: 2 });
      }
      const operator = await startOperator({
        kubeconfig: flags.kubeconfig as string | undefined,
        namespaces: String(flags.namespaces ?? "").split(",").filter(Boolean),
        probeAddress: String(flags.probeAddress),
        progressAddress: String(flags.progressAddress),
        progressTls: tls,
        keySecret: keys,
        progressCertHosts: String(flags.progressCertHosts ?? "").split(",").filter(Boolean),
        leaderElection: { enabled: Boolean(flags.leaderElect), namespace: String(flags.leaderElectionNamespace), name: String(flags.leaderElectionId) },
        secureMetrics: secureMetrics(flags),
        metricsOnProbePort: flags.probeMetrics !== false,
        concurrency: Number(flags.concurrency),
        queues,
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
          interruptionLimit: wholeNumber(flags, "interruptionLimit", "--interruption-limit"),
        },
      });
      console.log(`kubetune operator: probes on :${operator.probePort}, progress on :${operator.progressPort}`);
      const shutdown = (signal: string) => {
        console.log(`kubetune operator: ${signal}, shutting down`);
        void operator.stop().then(() => process.exit(0));
      };
      // Lost leadership: exit non-zero so that the Deployment restarts the process, which rejoins the election afresh.
      void operator.fatal.then((reason) => {
        console.error(`kubetune operator: exiting: ${reason}`);
        void operator.stop().finally(() => process.exit(1));
      });
      process.once("SIGTERM", () => shutdown("SIGTERM"));
      process.once("SIGINT", () => shutdown("SIGINT"));
    });
}

function progressTls(flags: Record<string, string | boolean | undefined>): { certFile: string; keyFile: string } | undefined {
  if (!flags.progressTlsCert && !flags.progressTlsKey) {
    if (!flags.keySecret) throw new Error("--progress-tls-cert and --progress-tls-key, or --key-secret: the progress endpoint needs a certificate");
    return undefined;
  }
  if (!flags.progressTlsCert || !flags.progressTlsKey) throw new Error("--progress-tls-cert and --progress-tls-key go together");
  return { certFile: String(flags.progressTlsCert), keyFile: String(flags.progressTlsKey) };
}

function keySecret(flags: Record<string, string | boolean | undefined>): { namespace: string; name: string; dir: string } | undefined {
  if (!flags.keySecret) return undefined;
  const match = /^([a-z0-9-]+)\/([a-z0-9.-]+)$/.exec(String(flags.keySecret));
  if (!match) throw new Error(`--key-secret ${String(flags.keySecret)}: must be <namespace>/<name>`);
  if (!flags.keySecretDir) throw new Error("--key-secret needs --key-secret-dir: where the operator's pod mounts that Secret");
  return { namespace: match[1]!, name: match[2]!, dir: String(flags.keySecretDir) };
}

export const QUEUE_MODES = ["builtin", "kueue"] as const;

/** --queues builtin,kueue as startOperator's queues option; an unknown or empty entry is an error naming the flag. */
export function queueModes(value: string | boolean | undefined): { builtIn: boolean; kueue: boolean } {
  if (value === undefined) return { builtIn: false, kueue: false };
  const modes = String(value).split(",").map((mode) => mode.trim().toLowerCase());
  const unknown = modes.filter((mode) => !(QUEUE_MODES as readonly string[]).includes(mode));
  if (unknown.length) throw new Error(`--queues ${String(value)}: unknown queue mode ${unknown.map((mode) => JSON.stringify(mode)).join(", ")}; the modes are builtin and kueue (e.g. --queues builtin,kueue)`);
  return { builtIn: modes.includes("builtin"), kueue: modes.includes("kueue") };
}

function secureMetrics(flags: Record<string, string | boolean | undefined>): "kubernetes" | "none" | undefined {
  const value = flags.secureMetrics;
  if (value === undefined) {
    if (flags.probeMetrics === false) throw new Error("--no-probe-metrics needs --secure-metrics: /metrics would be served nowhere");
    return undefined;
  }
  if (value !== "kubernetes" && value !== "none") throw new Error(`--secure-metrics ${String(value)}: must be kubernetes or none`);
  return value;
}

function wholeNumber(flags: Record<string, string | boolean | undefined>, name: string, flag: string): number {
  const value = Number(flags[name]);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${flag} ${String(flags[name])}: must be a whole number >= 0`);
  return value;
}
