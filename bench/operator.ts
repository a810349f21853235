// The operator's benchmark, against one real loopback kube-apiserver + etcd for the whole run:
//
// - floor: the bench itself, with the operator's client and the operator's concurrency, writes
//   what the operator must write for N jobs and no more (N trainer pods, N status patches),
//   directly: the time the API server needs for those writes on this machine. A second floor
//   writes all that the operator writes per job (also its finalizer patch and its Event): the
//   gap between it and the operator is the operator's own cost.
// - operator: `kubetune operator` as its own process, exactly as the image runs it (the bundle
//   dist/operator.mjs, built first when stale, under the image's V8 flags, OPERATOR_NODE_FLAGS of
//   bin/operator-launch.mjs), as a ServiceAccount holding the chart's rules (helm/kubetune/files/operator-rules.yaml), watching a fresh
//   namespace; the bench creates N FineTuneJobs (16 at a time) and times the first create to the
//   last trainer pod (a watch sees it). The API server's audit log says which requests the
//   operator made, by Kubernetes verb (get, list, watch, create, patch, ...). No pod runner runs,
//   so pods stay Pending, as they would while the cluster's GPUs are busy.
//
// Floor and operator alternate `repeats` times (medians reported), then one run of `rssJobs`
// jobs (10,000 by default) measures the operator's peak RSS at that scale.
//
//   node --import tsx bench/operator.ts [--jobs 1000] [--repeats 3] [--rss-jobs 10000] [--json]
import type { V1Pod } from "@kubernetes/client-node";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parse } from "yaml";
import { API_VERSION, applyDefaults, CRD_FILE, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../api/index.ts";
import { resourcePath, type KubeClient } from "../kube/client.ts";
import { startLocalCluster, type LocalCluster } from "../localcluster/cluster.ts";
import { kubeconfigYaml } from "../localcluster/controlplane.ts";
import { freePort } from "../localcluster/process.ts";
import { FINALIZER, trainerPod } from "../operator/finetunejob/pods.ts";
import { OPERATOR_BUNDLE, OPERATOR_NODE_FLAGS, staleBundle } from "../bin/operator-launch.mjs";

/** The operator's reconcile workers, and so the floor's client concurrency. */
const CONCURRENCY = 4;
/** How many FineTuneJobs the bench creates at a time (kubectl apply of many files, a GitOps sync). */
const CREATE_CONCURRENCY = 16;
const WRITE_VERBS = ["create", "update", "patch", "delete"];

export interface OperatorRun {
  jobs: number;
  secondsUntilAllPods: number;
  secondsToCreate: number;
  reconciles: number;
  apiRequestsByVerb: Record<string, number>;
  apiWritesPerJob: number;
  operatorPeakRssMiB: number;
}

export interface OperatorBenchFigures {
  jobs: number;
  repeats: number;
  statistic: string;
  /** Seconds from the first create until every job's trainer pod exists (median). */
  secondsUntilAllPods: number;
  /** Seconds the same client concurrency takes to write N pods and N status patches directly (median). */
  floorSeconds: number;
  /** What the floor writes per job. */
  floorWrites: string;
  /**
   * Seconds the same client concurrency takes to write everything the operator writes per job (its finalizer
   * patch, the pod, the status patch, its Event) directly (median): what is left between this and the operator's
   * time is the operator's own cost (watch latency, reconcile, queueing) and the jobs' creation.
   */
  floorAllWritesSeconds: number;
  /** secondsUntilAllPods / floorAllWritesSeconds, per repeat, then the median. */
  ratioToAllWritesFloor: number;
  /** secondsUntilAllPods / floorSeconds, per repeat, then the median. */
  ratioToFloor: number;
  /** Seconds the bench took to create the jobs (16 at a time; median). */
  secondsToCreate: number;
  reconcilesPerSecond: number;
  /** Operator requests by Kubernetes verb, from the API server's audit log (the median run's). */
  apiRequestsByVerb: Record<string, number>;
  apiWritesPerJob: number;
  /** Single-object GETs per job (goal: none; the caches answer). */
  apiGetsPerJob: number;
  operatorPeakRssMiB: number;
  rssAt10kJobsMiB?: number;
  /** The 10,000-job run: one run (it takes minutes). */
  tenThousandJobs?: OperatorRun;
  runs: { floorSeconds: number; floorAllWritesSeconds: number; operator: OperatorRun }[];
  concurrency: number;
  /** How the operator ran: the bundle, and the V8 flags (the operator image's). */
  operatorProcess: { entry: string; nodeFlags: string[]; builtForThisRun: boolean };
  kubeApiserver: string;
}

export interface OperatorBenchOptions {
  jobs: number;
  repeats?: number;
  /** Jobs of the extra run that measures peak RSS; 0 skips it. */
  rssJobs?: number;
  log?: (line: string) => void;
}

export async function benchOperator(options: OperatorBenchOptions): Promise<OperatorBenchFigures> {
  const { jobs } = options;
  const repeats = options.repeats ?? 3;
  const log = options.log ?? (() => {});
  const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-bench-operator-"));
  const cluster = await startLocalCluster({ dir });
  try {
    await cluster.client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", parse(readFileSync(CRD_FILE, "utf8")));
    await waitUntil(async () => (await cluster.client.list(resourcePath({ group: GROUP, version: VERSION, plural: PLURAL }))) !== undefined, 30_000);
    const identity = await operatorIdentity(cluster, dir);
    const builtForThisRun = ensureOperatorBundle(log);
    const runs: OperatorBenchFigures["runs"] = [];
    for (let repeat = 1; repeat <= repeats; repeat += 1) {
      const floorSeconds = await measureFloor(cluster.client, `floor-${repeat}`, jobs);
      log(`repeat ${repeat}: floor ${floorSeconds} s for ${jobs} pods + ${jobs} status patches`);
      const floorAllWritesSeconds = await measureFloor(cluster.client, `floor-all-${repeat}`, jobs, true);
      log(`repeat ${repeat}: ${floorAllWritesSeconds} s for all the operator's ${4 * jobs} writes (finalizers, pods, status patches, Events)`);
      const operator = await measureOperator(cluster, identity, dir, `bench-${repeat}`, jobs, log);
      log(`repeat ${repeat}: operator ${operator.secondsUntilAllPods} s, ${operator.apiWritesPerJob} writes per job, peak RSS ${operator.operatorPeakRssMiB} MiB`);
      runs.push({ floorSeconds, floorAllWritesSeconds, operator });
    }
    const rssJobs = options.rssJobs ?? 0;
    const tenThousandJobs = rssJobs > 0 ? await measureOperator(cluster, identity, dir, "bench-rss", rssJobs, log) : undefined;
    if (tenThousandJobs) log(`${rssJobs} jobs: every pod in ${tenThousandJobs.secondsUntilAllPods} s, peak RSS ${tenThousandJobs.operatorPeakRssMiB} MiB`);

    const medianRun = runs.map((run) => run.operator).sort((a, b) => a.secondsUntilAllPods - b.secondsUntilAllPods)[Math.floor(runs.length / 2)]!;
    const requests = medianRun.apiRequestsByVerb;
    return {
      jobs,
      repeats,
      statistic: "median of the repeats; floor and operator alternate in one run against one API server",
      secondsUntilAllPods: median(runs.map((run) => run.operator.secondsUntilAllPods)),
      floorSeconds: median(runs.map((run) => run.floorSeconds)),
      floorWrites: "per job: the trainer pod (create) and one status patch; the operator's finalizer patch and Event are above it",
      ratioToFloor: round(median(runs.map((run) => run.operator.secondsUntilAllPods / run.floorSeconds))),
      floorAllWritesSeconds: median(runs.map((run) => run.floorAllWritesSeconds)),
      ratioToAllWritesFloor: round(median(runs.map((run) => run.operator.secondsUntilAllPods / run.floorAllWritesSeconds))),
      secondsToCreate: median(runs.map((run) => run.operator.secondsToCreate)),
      reconcilesPerSecond: round(median(runs.map((run) => run.operator.reconciles / run.operator.secondsUntilAllPods))),
      apiRequestsByVerb: requests,
      apiWritesPerJob: median(runs.map((run) => run.operator.apiWritesPerJob)),
      apiGetsPerJob: round((requests.get ?? 0) / jobs),
      operatorPeakRssMiB: median(runs.map((run) => run.operator.operatorPeakRssMiB)),
      ...(tenThousandJobs && rssJobs === 10_000 ? { rssAt10kJobsMiB: tenThousandJobs.operatorPeakRssMiB } : {}),
      ...(tenThousandJobs ? { tenThousandJobs } : {}),
      runs,
      concurrency: CONCURRENCY,
      operatorProcess: { entry: path.relative(REPO, fileURLToPath(OPERATOR_BUNDLE)), nodeFlags: [...OPERATOR_NODE_FLAGS], builtForThisRun },
      kubeApiserver: cluster.versions.kubeApiserver,
    };
  } finally {
    await cluster.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

const REPO = path.dirname(import.meta.dirname);

/**
 * Makes sure dist/operator.mjs is built from the sources as they are (`npm run build` when it is
 * stale), so that the bench measures the operator the image ships; true when it built it. The
 * runs then start the bundle directly, so that a source edited during the bench changes nothing.
 */
function ensureOperatorBundle(log: (line: string) => void): boolean {
  const stale = staleBundle();
  if (stale === undefined) return false;
  log(`building the operator bundle (${stale})`);
  const build = spawnSync(process.execPath, ["scripts/build-operator.mjs"], { cwd: REPO, encoding: "utf8" });
  if (build.status !== 0) throw new Error(`npm run build failed: ${build.stderr || build.stdout}`);
  const still = staleBundle();
  if (still !== undefined) throw new Error(`dist/operator.mjs is still stale after npm run build: ${still}`);
  return true;
}

/** A ServiceAccount with the chart's rules, cluster-wide, and a kubeconfig with its token: the operator's requests are then its own in the audit log. */
async function operatorIdentity(cluster: LocalCluster, dir: string): Promise<{ kubeconfig: string; username: string }> {
  const { client } = cluster;
  const namespace = "kubetune-system";
  await client.create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } });
  await client.create(resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace }), { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "kubetune-operator" } });
  const rules = parse(readFileSync(path.join(import.meta.dirname, "../helm/kubetune/files/operator-rules.yaml"), "utf8")) as object[];
  await client.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", { apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", metadata: { name: "kubetune-operator" }, rules });
  await client.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
    apiVersion: "rbac.authorization.k8s.io/v1",
    kind: "ClusterRoleBinding",
    metadata: { name: "kubetune-operator" },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "kubetune-operator" },
    subjects: [{ kind: "ServiceAccount", name: "kubetune-operator", namespace }],
  });
  const token = await client.create<{ status: { token: string } }>(`${resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace, name: "kubetune-operator" })}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { expirationSeconds: 24 * 3600 },
  });
  const kubeconfig = path.join(dir, "operator.kubeconfig");
  await writeFile(kubeconfig, kubeconfigYaml(cluster.controlPlane.server, readFileSync(cluster.controlPlane.caCert), token.status.token, "kubetune-operator"), { mode: 0o600 });
  return { kubeconfig, username: `system:serviceaccount:${namespace}:kubetune-operator` };
}

function jobManifest(index: number): FineTuneJob {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: `bench-${String(index).padStart(5, "0")}` },
    spec: {
      baseModel: { uri: "s3://models/base" },
      dataset: { train: "s3://data/train.jsonl" },
      method: { type: "lora" },
      output: { uri: `s3://outputs/bench-${index}` },
      resources: { gpus: 1 },
    },
  } as FineTuneJob;
}

async function createNamespace(client: KubeClient, name: string): Promise<void> {
  await client.create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name } });
}

/** Runs `work` for 0..count-1 with `concurrency` workers. */
async function inParallel(count: number, concurrency: number, work: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) await work(next++);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

async function createJobs(client: KubeClient, namespace: string, count: number): Promise<FineTuneJob[]> {
  const path = resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace });
  const created: FineTuneJob[] = [];
  await inParallel(count, CREATE_CONCURRENCY, async (index) => {
    created[index] = await client.create<FineTuneJob>(path, jobManifest(index));
  });
  return created;
}

/**
 * The floor: per job, the trainer pod (the operator's own manifest) and a status patch, written
 * with the operator's concurrency. The jobs exist beforehand (untimed). The operator's other
 * writes (its finalizer, an Event) are not in it: they are what it spends above the floor.
 */
async function measureFloor(client: KubeClient, namespace: string, count: number, allWrites = false): Promise<number> {
  await createNamespace(client, namespace);
  const jobs = await createJobs(client, namespace, count);
  const settings = { defaultImage: "kubetune-trainer:bench", progressUrl: "https://kubetune-operator.kubetune-system.svc:8443", terminationGraceSeconds: 300 };
  const started = performance.now();
  await inParallel(count, CONCURRENCY, async (index) => {
    const job = jobs[index]!;
    const name = job.metadata.name!;
    const jobPath = resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
    // allWrites: also the operator's finalizer patch (before the pod) and its Event (after the status), as it sends them.
    if (allWrites) await client.patch(jobPath, [{ op: "test", path: "/metadata/resourceVersion", value: job.metadata.resourceVersion }, { op: "add", path: "/metadata/finalizers", value: [FINALIZER] }], "json");
    await client.create(resourcePath({ group: "", version: "v1", plural: "pods", namespace }), trainerPod(job, applyDefaults(job.spec), 1, 0, settings));
    const now = new Date().toISOString();
    await client.patch(`${jobPath}/status`, {
      status: {
        phase: "Running",
        attempts: 1,
        startTime: now,
        observedGeneration: 1,
        conditions: [{ type: "Running", status: "False", reason: "PodCreated", message: "attempt 1 is starting", lastTransitionTime: now, observedGeneration: 1 }],
      },
    });
    if (allWrites) {
      await client.create(resourcePath({ group: "", version: "v1", plural: "events", namespace }), {
        apiVersion: "v1",
        kind: "Event",
        metadata: { name: `${name}.bench` },
        involvedObject: { apiVersion: API_VERSION, kind: KIND, name, namespace, uid: job.metadata.uid },
        type: "Normal",
        reason: "PodCreated",
        message: `created pod ${name}-train-1 (attempt 1)`,
        source: { component: "kubetune-operator" },
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
      });
    }
  });
  return round((performance.now() - started) / 1000);
}

async function measureOperator(cluster: LocalCluster, identity: { kubeconfig: string; username: string }, dir: string, namespace: string, jobs: number, log: (line: string) => void): Promise<OperatorRun> {
  const { client } = cluster;
  await createNamespace(client, namespace);
  const probePort = await freePort();
  // As the image runs it: node <OPERATOR_NODE_FLAGS> and the bundle (bin/kubetune.mjs would import the same file).
  const operator = spawn(
    process.execPath,
    [
      ...OPERATOR_NODE_FLAGS,
      fileURLToPath(OPERATOR_BUNDLE),
      "operator",
      `--kubeconfig=${identity.kubeconfig}`,
      `--namespaces=${namespace}`,
      `--probe-address=127.0.0.1:${probePort}`,
      `--progress-address=127.0.0.1:${await freePort()}`,
      `--progress-tls-cert=${path.join(dir, "pki", "serving.crt")}`,
      `--progress-tls-key=${path.join(dir, "pki", "serving.key")}`,
      "--no-preflight",
      `--concurrency=${CONCURRENCY}`,
    ],
    { cwd: REPO, stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true" } },
  );
  const kill = () => operator.kill("SIGKILL");
  process.once("exit", kill);
  try {
    const metricsUrl = `http://127.0.0.1:${probePort}/metrics`;
    await waitUntil(async () => (await fetch(`http://127.0.0.1:${probePort}/readyz`).catch(() => undefined))?.status === 200, 60_000, operator);
    const baseline = await scrape(metricsUrl);
    const auditFrom = Date.now();
    log(`operator ready; creating ${jobs} FineTuneJobs in ${namespace}`);

    const pods = countTrainerPods(client, namespace, jobs);
    const started = performance.now();
    await createJobs(client, namespace, jobs);
    const secondsToCreate = (performance.now() - started) / 1000;
    await pods.all;
    const secondsUntilAllPods = (performance.now() - started) / 1000;
    // The status writes that follow the last pods land, and the pod events' reconciles run, before the counts are read.
    await settle(metricsUrl);
    const after = await scrape(metricsUrl);
    const reconciles = (after.get("kubetune_reconcile_duration_seconds_count") ?? 0) - (baseline.get("kubetune_reconcile_duration_seconds_count") ?? 0);
    const apiRequestsByVerb = auditedVerbs(cluster.controlPlane.auditLog, identity.username, auditFrom);
    const writes = WRITE_VERBS.reduce((sum, verb) => sum + (apiRequestsByVerb[verb] ?? 0), 0);
    return {
      jobs,
      secondsUntilAllPods: round(secondsUntilAllPods),
      secondsToCreate: round(secondsToCreate),
      reconciles,
      apiRequestsByVerb,
      apiWritesPerJob: round(writes / jobs),
      operatorPeakRssMiB: round(peakRssMiB(operator)),
    };
  } finally {
    process.off("exit", kill);
    operator.kill("SIGTERM");
    await new Promise((resolve) => (operator.exitCode === null ? operator.once("exit", resolve) : resolve(undefined)));
  }
}

/** Resolves `all` once a watch has seen `count` trainer pods in the namespace. */
function countTrainerPods(client: KubeClient, namespace: string, count: number): { all: Promise<void> } {
  const seen = new Set<string>();
  const controller = new AbortController();
  const all = new Promise<void>((resolve, reject) => {
    const watch = async (resourceVersion: string) => {
      for (;;) {
        await client.watch<V1Pod>(
          resourcePath({ group: "", version: "v1", plural: "pods", namespace }),
          { labelSelector: "app.kubernetes.io/component=trainer", resourceVersion, allowWatchBookmarks: true, timeoutSeconds: 300 },
          (type, pod) => {
            if (pod.metadata?.resourceVersion) resourceVersion = pod.metadata.resourceVersion;
            if (type === "ADDED" && pod.metadata?.name) seen.add(pod.metadata.name);
            if (seen.size >= count) {
              controller.abort();
              resolve();
            }
          },
          controller.signal,
        );
        if (controller.signal.aborted) return;
      }
    };
    watch("0").catch((error: unknown) => (controller.signal.aborted ? resolve() : reject(error as Error)));
  });
  return { all };
}

/** Waits until the operator's reconcile count stops moving (2 s without a reconcile), at most a minute. */
async function settle(metricsUrl: string): Promise<void> {
  let last = -1;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const count = (await scrape(metricsUrl)).get("kubetune_reconcile_duration_seconds_count") ?? 0;
    if (count === last) return;
    last = count;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

/** The user's requests since `since` (epoch ms) by Kubernetes verb, from the audit log; a watch counts once. */
function auditedVerbs(auditLog: string, username: string, since: number): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of readFileSync(auditLog, "utf8").split("\n")) {
    if (!line.includes(username)) continue;
    const event = JSON.parse(line) as { stage: string; verb: string; user: { username: string }; requestReceivedTimestamp: string };
    if (event.user.username !== username || Date.parse(event.requestReceivedTimestamp) < since) continue;
    // A watch is logged when it starts and when it ends; other requests when they complete.
    if (event.verb === "watch" ? event.stage !== "ResponseStarted" : event.stage !== "ResponseComplete") continue;
    counts[event.verb] = (counts[event.verb] ?? 0) + 1;
  }
  return Object.fromEntries(Object.entries(counts).sort());
}

function peakRssMiB(child: ChildProcess): number {
  return Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
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

async function waitUntil(check: () => Promise<boolean>, timeoutMs: number, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`the operator exited with ${child.exitCode}`);
    if (await check().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`not done after ${timeoutMs / 1000}s`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return round(sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2);
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  // Interrupted: exit normally, so that the servers this benchmark started are stopped too.
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => process.exit(130));
  const { values } = parseArgs({
    options: {
      jobs: { type: "string", default: "1000" },
      repeats: { type: "string", default: "3" },
      "rss-jobs": { type: "string", default: "10000" },
      json: { type: "boolean", default: false },
    },
  });
  const figures = await benchOperator({
    jobs: Number(values.jobs),
    repeats: Number(values.repeats),
    rssJobs: Number(values["rss-jobs"]),
    log: (line) => console.error(`bench operator: ${line}`),
  });
  console.log(values.json ? JSON.stringify(figures) : figures);
}
