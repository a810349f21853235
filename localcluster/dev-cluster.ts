import { spawn } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CRD_FILE, QUEUE_CRD_FILE } from "../api/index.ts";
import { resourcePath } from "../kube/client.ts";
import { startOperator } from "../operator/operator.ts";
import { S3ObjectStore } from "../storage/s3-store.ts";
import { resolveBinaries } from "./binaries.ts";
import { installChart, waitUntilLeading } from "./chart.ts";
import { createBucket, startLocalCluster, type LocalCluster } from "./cluster.ts";
import { kubeletTls } from "./pki.ts";
import { PodRunner } from "./pod-runner.ts";
import { freePort, isAlive } from "./process.ts";

/**
 * `kubetune dev-cluster`: a whole kubetune installation on loopback — a real kube-apiserver +
 * etcd, MinIO, the CRD, the operator and the local pod runner — run by one supervisor process
 * in the background, so that `eval "$(kubetune dev-cluster up)"` prepares a shell.
 *
 * The operator runs in the supervisor's process, or with --from-chart as the Helm chart
 * installs it: the chart rendered and applied, its Deployment run as a pod (by the
 * DeploymentRunner and the pod runner), under its ServiceAccount and RBAC, with its flags.
 * Either way the operator runs the built-in queue (FineTuneQueue), and the pod runner's node
 * advertises --gpus nvidia.com/gpu (0 by default) so that GPU jobs and GPU quotas can be tried on
 * a machine without a GPU: the trainer of such a job computes on the CPU (trainer.backend auto
 * or cpu; gpu fails with BackendUnavailable, as on a real node without one).
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const DEV_IMAGE_REPOSITORY = "kubetune.local/kubetune";
const DEV_IMAGE_TAG = "dev";
/** The one image of the dev cluster's catalog: the kubetune CLI of this checkout. */
export const DEV_IMAGE = `${DEV_IMAGE_REPOSITORY}:${DEV_IMAGE_TAG}`;
export const DEV_BUCKET = "kubetune";
/** Where --from-chart installs the chart, as the README's helm install does. */
export const DEV_CHART_RELEASE = { name: "kubetune", namespace: "kubetune-system" } as const;

export interface DevClusterOptions {
  /** Run the operator from the Helm chart instead of in the supervisor's process. */
  fromChart?: boolean;
  /** nvidia.com/gpu the pod runner's node advertises (simulated: pods see no device); 0 by default. */
  gpus?: number;
}

interface DevClusterState {
  pid: number;
  dir: string;
  kubeconfig: string;
  kubectl: string;
  s3: { endpoint: string; accessKeyId: string; secretAccessKey: string; region: string };
  kubeApiserverVersion: string;
  /** How the operator runs: in the supervisor, or from the Helm chart. */
  operator: "in-process" | "chart";
  /** nvidia.com/gpu the node advertises (absent in state files of older checkouts: 0). */
  gpus?: number;
}

/** Under the temp folder, not the home folder: pods run as non-root users who must reach their folders. */
export function devClusterDir(): string {
  return process.env.KUBETUNE_DEV_CLUSTER_DIR ?? path.join(os.tmpdir(), `kubetune-dev-cluster-${process.getuid?.() ?? 0}`);
}

function stateFile(dir = devClusterDir()): string {
  return path.join(dir, "state.json");
}

function readState(dir = devClusterDir()): DevClusterState | undefined {
  return existsSync(stateFile(dir)) ? (JSON.parse(readFileSync(stateFile(dir), "utf8")) as DevClusterState) : undefined;
}

/** Shell lines that point kubectl, the AWS CLI and SDKs at the dev cluster. */
export function exportLines(state: DevClusterState): string {
  const quote = (value: string) => `'${value.replace(/'/g, "'\\''")}'`;
  return [
    `export KUBECONFIG=${quote(state.kubeconfig)}`,
    `export PATH=${quote(path.dirname(state.kubectl))}:"$PATH"`,
    `export AWS_ENDPOINT_URL=${quote(state.s3.endpoint)}`,
    `export AWS_ACCESS_KEY_ID=${quote(state.s3.accessKeyId)}`,
    `export AWS_SECRET_ACCESS_KEY=${quote(state.s3.secretAccessKey)}`,
    `export AWS_REGION=${quote(state.s3.region)}`,
    `# kubetune dev-cluster: kube-apiserver ${state.kubeApiserverVersion}; S3 at ${state.s3.endpoint}, bucket s3://${DEV_BUCKET}`,
    "",
  ].join("\n");
}

/** Starts the supervisor in the background and waits until the cluster is ready. */
export async function devClusterUp(options: DevClusterOptions & { timeoutMs?: number } = {}): Promise<string> {
  const gpus = checkGpus(options.gpus ?? 0);
  const dir = devClusterDir();
  const existing = readState(dir);
  if (existing && isAlive(existing.pid)) {
    const wanted = options.fromChart ? "chart" : "in-process";
    if (existing.operator !== wanted) {
      throw new Error(`a dev cluster is already running with its operator ${existing.operator === "chart" ? "from the Helm chart" : "in-process"}; run kubetune dev-cluster down first`);
    }
    if ((existing.gpus ?? 0) !== gpus) throw new Error(`a dev cluster is already running with --gpus ${existing.gpus ?? 0}; run kubetune dev-cluster down first`);
    return exportLines(existing);
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const log = openSync(path.join(dir, "supervisor.log"), "a");
  const child = spawn(process.execPath, [path.join(repoRoot, "bin/kubetune.mjs"), "dev-cluster", "serve", "--dir", dir, "--gpus", String(gpus), ...(options.fromChart ? ["--from-chart"] : [])], {
    detached: true,
    stdio: ["ignore", log, log],
    env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true" },
  });
  child.unref();
  const deadline = Date.now() + (options.timeoutMs ?? 20 * 60_000);
  while (Date.now() < deadline) {
    const state = readState(dir);
    if (state) return exportLines(state);
    if (child.exitCode !== null || !isAlive(child.pid!)) {
      throw new Error(`the dev cluster failed to start; see ${path.join(dir, "supervisor.log")}:\n${readFileSync(path.join(dir, "supervisor.log"), "utf8").split("\n").slice(-15).join("\n")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  throw new Error(`the dev cluster was not ready in time; see ${path.join(dir, "supervisor.log")}`);
}

/** Stops the supervisor, which stops everything it started. */
export async function devClusterDown(): Promise<string> {
  const state = readState();
  if (!state || !isAlive(state.pid)) {
    rmSync(stateFile(), { force: true });
    return "no dev cluster is running";
  }
  process.kill(state.pid, "SIGTERM");
  const deadline = Date.now() + 60_000;
  while (isAlive(state.pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
  if (isAlive(state.pid)) process.kill(-state.pid, "SIGKILL");
  rmSync(stateFile(), { force: true });
  return "dev cluster stopped";
}

export function devClusterStatus(): string {
  const state = readState();
  if (!state || !isAlive(state.pid)) return "no dev cluster is running";
  const operator = state.operator === "chart" ? `operator from the Helm chart in ${DEV_CHART_RELEASE.namespace}` : "operator in-process";
  return `running (pid ${state.pid}): kube-apiserver ${state.kubeApiserverVersion}, S3 ${state.s3.endpoint}, ${operator}, ${gpuCount(state.gpus ?? 0)}, kubeconfig ${state.kubeconfig}`;
}

/** The supervisor: starts everything, writes the state file, and stops it all on SIGTERM. */
export async function devClusterServe(dir: string, options: DevClusterOptions = {}): Promise<void> {
  const log = (line: string) => console.log(`${new Date().toISOString()} ${line}`);
  const cluster = await startLocalCluster({ dir, log });
  const stops: (() => Promise<void>)[] = [() => cluster.stop()];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch((error: unknown) => log(`stopping: ${(error as Error).message}`));
  };
  try {
    const { client, s3 } = cluster;
    if (!options.fromChart) {
      // The chart installs both CRDs itself (its crds/).
      const { parse } = await import("yaml");
      for (const file of [CRD_FILE, QUEUE_CRD_FILE]) await client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", parse(readFileSync(path.join(repoRoot, file), "utf8")));
    }
    await createBucket(s3, DEV_BUCKET);
    await seedQuickstart(new S3ObjectStore(DEV_BUCKET, "quickstart", { endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } }));
    await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace: "default" }), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "kubetune-s3" },
      stringData: { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
    });
    const runner = new PodRunner({
      client,
      workDir: path.join(dir, "pods"),
      images: { [DEV_IMAGE]: { entrypoint: [process.execPath, path.join(repoRoot, "bin/kubetune.mjs")] } },
      capacity: { cpu: String(os.cpus().length), memory: `${Math.floor(os.totalmem() / 2 ** 20)}Mi`, gpus: checkGpus(options.gpus ?? 0) },
      kubeletTls: kubeletTls(path.join(dir, "pki")),
      log,
    });
    await runner.start();
    stops.push(() => runner.stop());
    if (options.fromChart) {
      stops.push(await startChartOperator(cluster, log));
    } else {
      stops.push(await startInProcessOperator(cluster, dir, log));
    }
    // A kubectl of the server's own version, under its usual name, for the PATH export.
    mkdirSync(path.join(dir, "bin"), { recursive: true });
    symlinkSync(cluster.kubectl, path.join(dir, "bin", "kubectl"));
    const state: DevClusterState = {
      pid: process.pid,
      dir,
      kubeconfig: cluster.controlPlane.kubeconfig,
      kubectl: path.join(dir, "bin", "kubectl"),
      s3: { endpoint: s3.endpoint, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, region: s3.region },
      kubeApiserverVersion: cluster.versions.kubeApiserver,
      operator: options.fromChart ? "chart" : "in-process",
      gpus: options.gpus ?? 0,
    };
    writeFileSync(stateFile(dir), JSON.stringify(state, null, 2), { mode: 0o600 });
    log(`dev cluster ready: kube-apiserver ${state.kubeApiserverVersion}, MinIO ${s3.endpoint}, operator ${state.operator}, ${gpuCount(state.gpus ?? 0)}`);
  } catch (error) {
    await stopAll();
    throw error;
  }
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
  log("stopping the dev cluster");
  await stopAll();
  process.exit(0);
}

/** The operator in this process, with the dev cluster's settings. */
async function startInProcessOperator(cluster: LocalCluster, dir: string, log: (line: string) => void): Promise<() => Promise<void>> {
  const { s3 } = cluster;
  const progressPort = await freePort();
  const pki = path.join(dir, "pki");
  const operator = await startOperator({
    kubeconfig: cluster.controlPlane.kubeconfig,
    namespaces: [],
    probeAddress: "127.0.0.1:0",
    progressAddress: `127.0.0.1:${progressPort}`,
    progressTls: { certFile: path.join(pki, "serving.crt"), keyFile: path.join(pki, "serving.key") },
    leaderElection: { enabled: false, namespace: "default", name: "kubetune-operator" },
    concurrency: 4,
    queues: { builtIn: true },
    log,
    settings: {
      defaultImage: DEV_IMAGE,
      progressUrl: `https://127.0.0.1:${progressPort}`,
      progressCa: await readFile(path.join(pki, "ca.crt"), "utf8"),
      defaultStorage: { endpoint: s3.endpoint, region: s3.region, forcePathStyle: true },
      terminationGraceSeconds: 60,
      preflight: true,
      imagePullTimeoutSeconds: 120,
      unschedulableTimeoutSeconds: 300,
      retryBackoffBaseSeconds: 5,
      retryBackoffMaxSeconds: 120,
    },
  });
  log(`operator in-process, progress on :${progressPort}`);
  return () => operator.stop();
}

/**
 * The operator as `helm install kubetune helm/kubetune -n kubetune-system` runs it, with the
 * values a one-machine cluster needs: one replica on free ports (pods share this machine's
 * network), trainers reaching its progress endpoint on 127.0.0.1, the dev image everywhere,
 * and MinIO as the default S3 endpoint.
 */
async function startChartOperator(cluster: LocalCluster, log: (line: string) => void): Promise<() => Promise<void>> {
  const [probePort, progressPort] = [await freePort(), await freePort()];
  const image = { repository: DEV_IMAGE_REPOSITORY, tag: DEV_IMAGE_TAG };
  const chart = await installChart(cluster.client, {
    helm: (await resolveBinaries(["helm"], log)).helm,
    chart: path.join(repoRoot, "helm", "kubetune"),
    release: DEV_CHART_RELEASE.name,
    namespace: DEV_CHART_RELEASE.namespace,
    kubeVersion: cluster.versions.kubeApiserver,
    values: {
      image: { ...image, pullPolicy: "IfNotPresent" },
      trainerImage: { cpu: image, gpu: image },
      replicas: 1,
      queues: { builtIn: { enabled: true } },
      operator: {
        probePort,
        progressPort,
        progressUrl: `https://127.0.0.1:${progressPort}`,
        progressCertificateIPs: ["127.0.0.1"],
        defaultS3Endpoint: cluster.s3.endpoint,
        defaultS3Region: cluster.s3.region,
        terminationGraceSeconds: 60,
        imagePullTimeoutSeconds: 120,
        unschedulableTimeoutSeconds: 300,
        retryBackoffSeconds: 5,
      },
    },
    log,
  });
  await waitUntilLeading(`http://127.0.0.1:${probePort}`);
  log(`operator from the Helm chart in ${DEV_CHART_RELEASE.namespace}: probes on :${probePort}, progress on :${progressPort}`);
  return () => chart.stop();
}

/** --gpus: a whole number, so that a typo fails at once rather than as an unschedulable pod. */
export function checkGpus(gpus: number): number {
  if (!Number.isInteger(gpus) || gpus < 0 || gpus > 64) throw new Error(`--gpus ${gpus}: must be a whole number from 0 to 64`);
  return gpus;
}

function gpuCount(gpus: number): string {
  return `${gpus} GPU${gpus === 1 ? "" : "s"}`;
}

/** Copies examples/quickstart (model and data) into the bucket, if it exists. */
async function seedQuickstart(store: S3ObjectStore): Promise<void> {
  const source = path.join(repoRoot, "examples", "quickstart");
  if (!existsSync(source)) return;
  const walk = async (relative: string): Promise<void> => {
    for (const entry of await readdir(path.join(source, relative), { withFileTypes: true })) {
      const key = relative ? `${relative}/${entry.name}` : entry.name;
      if (entry.isDirectory()) await walk(key);
      else await store.put(key, await readFile(path.join(source, key)));
    }
  };
  await walk("");
}
