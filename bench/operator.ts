// The operator's benchmark, against one real loopback kube-apiserver + etcd for the whole run:
//
// - floors: the bench itself, with the operator's client and the operator's concurrency, writes
//   objects for N jobs directly: the time the API server needs for those writes on this machine.
//   `floorSeconds` writes what the operator writes per job (the trainer pod, a status patch, an
//   Event; DESIGN.md's definition). Two more: the pod and the status patch alone (what no operator
//   can avoid), and issue 10's floor (a Secret, the pod, a status patch: the objects the operator
//   had to write when that issue set the 1.5x goal). Each floor's jobs exist before it is timed;
//   the operator's time includes creating its jobs, so its ratio to the pods-and-status floor
//   cannot go below about (N creates + 2N writes) / 2N, 1.5, even for an operator that costs nothing.
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
//   node --import tsx bench/operator.ts [--jobs 1000] [--repeats 3] [--rss-jobs 10000] [--no-garbage-collector] [--json]
import type { V1Pod } from "@kubernetes/client-node";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
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
import { trainerPod } from "../operator/finetunejob/pods.ts";
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
  /** CPU seconds the operator's process used from the first create until every pod existed. */
  operatorCpuSeconds: number;
  /** CPU seconds the whole machine used (all processes, all cores) in that window, and its cores. */
  machineCpuSeconds: number;
  cores: number;
}

export interface OperatorBenchFigures {
  jobs: number;
  repeats: number;
  statistic: string;
  /** Seconds from the first create until every job's trainer pod exists (median). */
  secondsUntilAllPods: number;
  /**
   * Seconds the same client concurrency takes to write directly what the operator writes per job: the trainer pod,
   * the status patch and the Event (median).
   */
  floorSeconds: number;
  /** What floorSeconds writes per job. */
  floorWrites: string;
  /** secondsUntilAllPods / floorSeconds, per repeat, then the median. */
  ratioToFloor: number;
  /** The same, writing only the pod and the status patch of each job (median). */
  floorPodsAndStatusSeconds: number;
  ratioToPodsAndStatusFloor: number;
  /** Issue 10's floor: a Secret, the pod and the status patch of each job (median). */
  floorSecretsPodsAndStatusSeconds: number;
  ratioToSecretsPodsAndStatusFloor: number;
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
  /**
   * Seconds the bench takes to create the N FineTuneJobs (16 at a time) with no operator running (median): the
   * operator's time includes these creates (it starts at the first), the floors do not (their jobs exist first).
   */
  jobCreateSeconds: number;
  runs: ({ jobCreateSeconds: number; operator: OperatorRun } & Record<FloorKind, number>)[];
  concurrency: number;
  /** How the operator ran: the bundle, and the V8 flags (the operator image's). */
  operatorProcess: { entry: string; nodeFlags: string[]; builtForThisRun: boolean };
  kubeApiserver: string;
  /** Whether Kubernetes' garbage collector ran beside the API server (it watches every write). */
  garbageCollector: boolean;
}

export interface OperatorBenchOptions {
  jobs: number;
  repeats?: number;
  /** Jobs of the extra run that measures peak RSS; 0 skips it. */
  rssJobs?: number;
  /**
   * Runs Kubernetes' garbage collector beside the API server (default true), as a real cluster's controller manager
   * does: it watches every resource, so each write also reaches it. False measures the API server without it.
   */
  garbageCollector?: boolean;
  log?: (line: string) => void;
}

export async function benchOperator(options: OperatorBenchOptions): Promise<OperatorBenchFigures> {
  const { jobs } = options;
  const repeats = options.repeats ?? 3;
  const log = options.log ?? (() => {});
  const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-bench-operator-"));
  const garbageCollector = options.garbageCollector ?? true;
  const cluster = await startLocalCluster({ dir, garbageCollector });
  try {
    await cluster.client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", parse(readFileSync(CRD_FILE, "utf8")));
    await waitUntil(async () => (await cluster.client.list(resourcePath({ group: GROUP, version: VERSION, plural: PLURAL }))) !== undefined, 30_000);
    const identity = await operatorIdentity(cluster, dir);
    const builtForThisRun = ensureOperatorBundle(log);
    const runs: OperatorBenchFigures["runs"] = [];
    for (let repeat = 1; repeat <= repeats; repeat += 1) {
      const floors = {} as Record<FloorKind, number>;
      let jobCreateSeconds = 0;
      for (const kind of FLOOR_KINDS) {
        const floor = await measureFloor(cluster.client, `floor-${kind.toLowerCase()}-${repeat}`, jobs, kind);
        floors[kind] = floor.seconds;
        if (kind === "sameObjects") jobCreateSeconds = floor.createSeconds;
        log(`repeat ${repeat}: floor ${floor.seconds} s for ${jobs} x (${FLOOR_WRITES[kind]}), after creating its ${jobs} jobs in ${floor.createSeconds} s`);
      }
      const operator = await measureOperator(cluster, identity, dir, `bench-${repeat}`, jobs, log);
      log(`repeat ${repeat}: operator ${operator.secondsUntilAllPods} s, ${operator.apiWritesPerJob} writes per job, peak RSS ${operator.operatorPeakRssMiB} MiB, CPU: operator ${operator.operatorCpuSeconds} s, machine ${operator.machineCpuSeconds} s of ${operator.cores} cores`);
      runs.push({ ...floors, jobCreateSeconds, operator });
    }
    const rssJobs = options.rssJobs ?? 0;
    const tenThousandJobs = rssJobs > 0 ? await measureOperator(cluster, identity, dir, "bench-rss", rssJobs, log) : undefined;
    if (tenThousandJobs) log(`${rssJobs} jobs: every pod in ${tenThousandJobs.secondsUntilAllPods} s, peak RSS ${tenThousandJobs.operatorPeakRssMiB} MiB`);

    const ratioTo = (kind: FloorKind) => round(median(runs.map((run) => run.operator.secondsUntilAllPods / run[kind])));
    const medianRun = runs.map((run) => run.operator).sort((a, b) => a.secondsUntilAllPods - b.secondsUntilAllPods)[Math.floor(runs.length / 2)]!;
    const requests = medianRun.apiRequestsByVerb;
    return {
      jobs,
      repeats,
      statistic: "median of the repeats; floor and operator alternate in one run against one API server",
      secondsUntilAllPods: median(runs.map((run) => run.operator.secondsUntilAllPods)),
      floorSeconds: median(runs.map((run) => run.sameObjects)),
      floorWrites: `per job: ${FLOOR_WRITES.sameObjects}`,
      ratioToFloor: ratioTo("sameObjects"),
      floorPodsAndStatusSeconds: median(runs.map((run) => run.podsAndStatus)),
      ratioToPodsAndStatusFloor: ratioTo("podsAndStatus"),
      floorSecretsPodsAndStatusSeconds: median(runs.map((run) => run.secretsPodsAndStatus)),
      ratioToSecretsPodsAndStatusFloor: ratioTo("secretsPodsAndStatus"),
      jobCreateSeconds: median(runs.map((run) => run.jobCreateSeconds)),
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
      garbageCollector,
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

/** The floors: what each writes per job, directly, with the operator's concurrency. */
type FloorKind = "sameObjects" | "podsAndStatus" | "secretsPodsAndStatus";
const FLOOR_KINDS: readonly FloorKind[] = ["sameObjects", "podsAndStatus", "secretsPodsAndStatus"];
const FLOOR_WRITES: Record<FloorKind, string> = {
  sameObjects: "the trainer pod (create), a status patch and an Event (create), as the operator writes them",
  podsAndStatus: "the trainer pod (create) and a status patch",
  secretsPodsAndStatus: "a Secret (create), the trainer pod (create) and a status patch: issue 10's floor",
};

/**
 * A floor: per job, the objects its kind names (the pod is the operator's own manifest), written with the
 * operator's concurrency. The jobs are created first (16 at a time, as for the operator) and that is timed apart.
 */
async function measureFloor(client: KubeClient, namespace: string, count: number, kind: FloorKind): Promise<{ seconds: number; createSeconds: number }> {
  await createNamespace(client, namespace);
  const creating = performance.now();
  const jobs = await createJobs(client, namespace, count);
  const createSeconds = round((performance.now() - creating) / 1000);
  const settings = { defaultImage: "kubetune-trainer:bench", progressUrl: "https://kubetune-operator.kubetune-system.svc:8443", terminationGraceSeconds: 300 };
  const started = performance.now();
  await inParallel(count, CONCURRENCY, async (index) => {
    const job = jobs[index]!;
    const name = job.metadata.name!;
    const jobPath = resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
    const owner = { apiVersion: API_VERSION, kind: KIND, name, uid: job.metadata.uid!, controller: true, blockOwnerDeletion: true };
    if (kind === "secretsPodsAndStatus") {
      // As operators before the projected token wrote it: the job's progress token, owned by the job.
      await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), {
        apiVersion: "v1",
        kind: "Secret",
        metadata: { name: `${name}-progress`, labels: { "kubetune.io/job-name": name }, ownerReferences: [owner] },
        type: "Opaque",
        data: { token: randomBytes(32).toString("base64") },
      });
    }
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
    if (kind === "sameObjects") {
      // The operator's Event, after the status, as it sends it.
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
  return { seconds: round((performance.now() - started) / 1000), createSeconds };
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
    const cpuBefore = { operator: processCpuSeconds(operator.pid!), machine: machineCpuSeconds() };
    const started = performance.now();
    await createJobs(client, namespace, jobs);
    const secondsToCreate = (performance.now() - started) / 1000;
    await pods.all;
    const secondsUntilAllPods = (performance.now() - started) / 1000;
    const operatorCpuSeconds = processCpuSeconds(operator.pid!) - cpuBefore.operator;
    const machineCpu = machineCpuSeconds() - cpuBefore.machine;
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
      operatorCpuSeconds: round(operatorCpuSeconds),
      machineCpuSeconds: round(machineCpu),
      cores: os.availableParallelism(),
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

/**
 * Waits until the operator's reconcile count stops moving (2 s without a reconcile) and its Events are written (they
 * yield to reconciles, so they trail the last pods), at most a minute.
 */
async function settle(metricsUrl: string): Promise<void> {
  let last = -1;
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const metrics = await scrape(metricsUrl);
    const count = metrics.get("kubetune_reconcile_duration_seconds_count") ?? 0;
    if (count === last && (metrics.get("kubetune_events_pending") ?? 0) === 0) return;
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

/** User + system CPU seconds of a process so far (/proc/PID/stat; the kernel counts in USER_HZ, 100 a second). */
function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The fields after the command name (which may hold spaces, so split after its closing parenthesis).
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Busy CPU seconds of the whole machine so far, all cores (/proc/stat: everything but idle and iowait). */
function machineCpuSeconds(): number {
  const [, ...ticks] = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = ticks as number[];
  return (user! + nice! + system! + irq! + softirq! + steal!) / 100;
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
      "garbage-collector": { type: "boolean", default: true },
      "no-garbage-collector": { type: "boolean", default: false },
      json: { type: "boolean", default: false },
    },
  });
  const figures = await benchOperator({
    jobs: Number(values.jobs),
    repeats: Number(values.repeats),
    rssJobs: Number(values["rss-jobs"]),
    garbageCollector: values["garbage-collector"] && !values["no-garbage-collector"],
    log: (line) => console.error(`bench operator: ${line}`),
  });
  console.log(values.json ? JSON.stringify(figures) : figures);
}
