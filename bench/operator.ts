// The operator's benchmark: against a real loopback kube-apiserver + etcd, create N
// FineTuneJobs (1,000 by default) and measure the seconds until every trainer pod exists,
// reconciles per second, API requests per job, and the operator process's peak memory.
// The operator runs as its own process (`kubetune operator`), exactly as deployed; no pod
// runner runs, so the pods stay Pending, as they would while a cluster's GPUs are busy.
//
//   node --import tsx bench/operator.ts [--jobs 1000] [--json]
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { parse } from "yaml";
import { API_VERSION, CRD_FILE, KIND } from "../api/index.ts";
import { resourcePath, type KubeClient } from "../kube/client.ts";
import { startLocalCluster } from "../localcluster/cluster.ts";
import { freePort } from "../localcluster/process.ts";

export interface OperatorBenchFigures {
  jobs: number;
  /** Seconds from the first create until every job's trainer pod exists. */
  secondsUntilAllPods: number;
  /** Seconds the benchmark took to create the jobs (16 at a time). */
  secondsToCreate: number;
  reconciles: number;
  reconcilesPerSecond: number;
  apiRequestsPerJob: number;
  apiRequestsByVerb: Record<string, number>;
  operatorPeakRssMiB: number;
  kubeApiserver: string;
}

export async function benchOperator(jobs: number, log: (line: string) => void = () => {}): Promise<OperatorBenchFigures> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-bench-operator-"));
  const cluster = await startLocalCluster({ dir });
  const { client } = cluster;
  let operator: ReturnType<typeof spawn> | undefined;
  try {
    await client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", parse(readFileSync(CRD_FILE, "utf8")));
    await waitUntil(async () => (await client.list(resourcePath({ group: "kubetune.io", version: "v1alpha1", plural: "finetunejobs" }))) !== undefined, 30_000).catch(() => undefined);
    const namespace = "bench";
    await client.create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } });
    const probePort = await freePort();
    operator = spawn(
      process.execPath,
      [
        "bin/kubetune.mjs",
        "operator",
        `--kubeconfig=${cluster.controlPlane.kubeconfig}`,
        `--namespaces=${namespace}`,
        `--probe-address=127.0.0.1:${probePort}`,
        `--progress-address=127.0.0.1:${await freePort()}`,
        `--progress-tls-cert=${path.join(dir, "pki", "serving.crt")}`,
        `--progress-tls-key=${path.join(dir, "pki", "serving.key")}`,
        "--no-preflight",
        "--concurrency=4",
      ],
      { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true" } },
    );
    const child = operator;
    process.once("exit", () => child.kill("SIGKILL"));
    const metricsUrl = `http://127.0.0.1:${probePort}/metrics`;
    await waitUntil(async () => (await fetch(`http://127.0.0.1:${probePort}/readyz`).catch(() => undefined))?.status === 200, 60_000);
    const baseline = await scrape(metricsUrl);
    log(`operator ready; creating ${jobs} FineTuneJobs`);

    const started = Date.now();
    await createJobs(client, namespace, jobs);
    const secondsToCreate = (Date.now() - started) / 1000;
    const podsPath = resourcePath({ group: "", version: "v1", plural: "pods", namespace });
    await waitUntil(async () => {
      const pods = await client.list(podsPath, { labelSelector: "app.kubernetes.io/component=trainer" });
      const count = pods.items.length;
      return count >= jobs;
    }, 20 * 60_000);
    const secondsUntilAllPods = (Date.now() - started) / 1000;
    // Let the status writes that follow the last pod land before reading the counters.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const after = await scrape(metricsUrl);
    const reconciles = (after.get("kubetune_reconcile_duration_seconds_count") ?? 0) - (baseline.get("kubetune_reconcile_duration_seconds_count") ?? 0);
    const apiRequestsByVerb: Record<string, number> = {};
    for (const [series, value] of after) {
      const verb = /^kubetune_api_requests_total\{verb="(\w+)"\}$/.exec(series)?.[1];
      if (verb) apiRequestsByVerb[verb] = value - (baseline.get(series) ?? 0);
    }
    const totalRequests = Object.values(apiRequestsByVerb).reduce((sum, count) => sum + count, 0);
    const peakRss = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${operator.pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
    return {
      jobs,
      secondsUntilAllPods: round(secondsUntilAllPods),
      secondsToCreate: round(secondsToCreate),
      reconciles,
      reconcilesPerSecond: round(reconciles / secondsUntilAllPods),
      apiRequestsPerJob: round(totalRequests / jobs),
      apiRequestsByVerb,
      operatorPeakRssMiB: round(peakRss),
      kubeApiserver: cluster.versions.kubeApiserver,
    };
  } finally {
    operator?.kill("SIGTERM");
    await new Promise((resolve) => (operator && operator.exitCode === null ? operator.once("exit", resolve) : resolve(undefined)));
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function createJobs(client: KubeClient, namespace: string, count: number): Promise<void> {
  const path = resourcePath({ group: "kubetune.io", version: "v1alpha1", plural: "finetunejobs", namespace });
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      await client.create(path, {
        apiVersion: API_VERSION,
        kind: KIND,
        metadata: { name: `bench-${String(index).padStart(4, "0")}` },
        spec: {
          baseModel: { uri: "s3://models/base" },
          dataset: { train: "s3://data/train.jsonl" },
          method: { type: "lora" },
          output: { uri: `s3://outputs/bench-${index}` },
          resources: { gpus: 1 },
        },
      });
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
}

/** Prometheus text format to a map of series -> value. */
async function scrape(url: string): Promise<Map<string, number>> {
  const text = await (await fetch(url)).text();
  const series = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    series.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return series;
}

async function waitUntil(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`not done after ${timeoutMs / 1000}s`);
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  // Interrupted: exit normally, so that the servers this benchmark started are stopped too.
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(130));
  const { values } = parseArgs({ options: { jobs: { type: "string", default: "1000" }, json: { type: "boolean", default: false } } });
  const figures = await benchOperator(Number(values.jobs), values.json ? undefined : (line) => console.error(line));
  console.log(values.json ? JSON.stringify(figures) : figures);
}
