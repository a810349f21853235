import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CRD_FILE, GROUP, PLURAL, QUEUE_CRD_FILE, QUEUE_PLURAL, VERSION, type FineTuneJob, type FineTuneQueue } from "../../api/index.ts";
import { isConflict, isNotFound, resourcePath } from "../../kube/client.ts";
import { Informer } from "../../kube/informer.ts";
import { startLocalKueue, type KueueManager } from "../../localcluster/kueue.ts";
import { QueueController } from "../../operator/queue/controller.ts";
import { KUEUE_GROUP, KUEUE_VERSION, KueueController, LABEL_PRIORITY_CLASS, workloadName, type Workload } from "../../operator/queue/kueue.ts";
import { QueueMetrics } from "../../operator/queue/metrics.ts";
import { EventRecorder } from "../../operator/runtime/events.ts";
import type { S3ObjectStore } from "../../storage/s3-store.ts";
import type { TinyJob } from "../../trainer/testing/tiny-job.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";
import { eventsOf, jobsPath, KUBETUNE_IMAGE, scriptedJobManifest, startOperatorHarness, tinyTraining, trainingJob, waitForPhase, type OperatorHarness, type TinyTraining } from "./operator-harness.ts";

const client = kubeClient();
const suffix = randomBytes(3).toString("hex");
const queuePath = (name?: string, subresource?: string) => resourcePath({ group: GROUP, version: VERSION, plural: QUEUE_PLURAL, name, subresource });
const jobStatusPath = (namespace: string, name: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name, subresource: "status" });

function queueManifest(name: string, spec: Record<string, unknown>): FineTuneQueue {
  return { apiVersion: `${GROUP}/${VERSION}`, kind: "FineTuneQueue", metadata: { name }, spec } as FineTuneQueue;
}

/** Both CRDs, established. */
function applyCrds(): void {
  const applied = kubectl(["apply", "--server-side", "--force-conflicts", "-f", CRD_FILE, "-f", QUEUE_CRD_FILE]);
  expect(applied.stderr).toBe("");
  expect(applied.status).toBe(0);
  expect(kubectl(["wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.io", "crd/finetunequeues.kubetune.io"]).status).toBe(0);
}

/** What the job controller writes, as it writes it: conditional on the version read, again on a conflict with the queue controller. */
async function setJobPhase(namespace: string, name: string, phase: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const job = await client.get<FineTuneJob>(jobsPath(namespace, name));
    try {
      await client.patch(jobStatusPath(namespace, name), { metadata: { resourceVersion: job.metadata.resourceVersion }, status: { phase } });
      return;
    } catch (error) {
      if (!isConflict(error) || attempt === 10) throw error;
    }
  }
}

const admittedOf = (job: FineTuneJob) => job.status?.conditions?.find((condition) => condition.type === "Admitted");

/** A real-trainer job (trainingJob) as the queue tests run it: 1 GPU, the trainer's image whatever the harness's default. */
function queuedTrainingJob(training: TinyTraining, namespace: string, name: string, spec: Record<string, unknown> = {}): FineTuneJob {
  return trainingJob(training, namespace, name, { trainer: { ...training.tiny.manifest.spec.trainer, image: KUBETUNE_IMAGE }, resources: { gpus: 1 }, ...spec });
}

/** The trainer's JSON event lines (`kubetune train` logs one per event) from a pod's log. */
function jsonEvents(harness: OperatorHarness, namespace: string, pod: string): TrainerEvent[] {
  return harness.runner
    .logs(namespace, pod)
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as TrainerEvent);
}

/**
 * Waits for a training pod's first checkpoint, then freezes its trainer (SIGSTOP): the tiny run
 * has about 2 s of training left after it, less than a preemption may take on a busy machine,
 * so a frozen trainer makes the preemption always land mid-run. Returns the trainer's pid.
 */
async function freezeAfterFirstCheckpoint(harness: OperatorHarness, namespace: string, pod: string): Promise<number> {
  return eventually(
    `${pod}'s first checkpoint`,
    async () => {
      if (!harness.runner.logs(namespace, pod).includes('"event":"checkpoint"')) return undefined;
      const trainer = harness.runner.processes().get(`${namespace}/${pod}`);
      if (!trainer) throw new Error(`${pod}'s trainer finished before it could be preempted`);
      process.kill(-trainer, "SIGSTOP");
      return trainer;
    },
    120_000,
  );
}

/** Lets a frozen trainer run again once the pod runner's SIGTERM waits on it: it finishes its step and checkpoints. */
async function resumeOnSigterm(pid: number): Promise<void> {
  await eventually("SIGTERM to the preempted trainer", async () => (signalPending(pid, "SIGTERM") ? true : undefined), 60_000);
  process.kill(-pid, "SIGCONT");
}

describe("the FineTuneQueue controller against the API server, playing the job controller's side by hand", () => {
  let namespace: string;
  let controller: QueueController;
  let jobs: Informer<FineTuneJob>;
  const registry = new Registry();
  const queue = `gpus-${suffix}`;

  beforeAll(async () => {
    applyCrds();
    namespace = await createNamespace("queue-ctl");
    jobs = new Informer<FineTuneJob>(client, { path: resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace }) });
    controller = new QueueController({ client, jobs: [jobs], metrics: new QueueMetrics(registry), events: new EventRecorder(client, "kubetune-test"), log: () => {} });
    await jobs.start();
    await controller.sync();
    controller.start();
  });

  afterAll(async () => {
    await controller?.stop();
    await jobs?.stop();
    await client.delete(queuePath(queue)).catch(() => undefined);
  });

  const getJob = (name: string) => client.get<FineTuneJob>(jobsPath(namespace, name));
  const setPhase = (name: string, phase: string) => setJobPhase(namespace, name, phase);
  const admittedJobs = async () => (await client.list<FineTuneJob>(jobsPath(namespace))).items.filter((job) => admittedOf(job)?.status === "True").map((job) => job.metadata.name!).sort();

  it("shows quota, use and queue length in kubectl get ftq", async () => {
    const created = async (name: string, spec: Record<string, unknown>) => client.create(jobsPath(namespace), scriptedJobManifest(name, namespace, { queueName: queue, resources: { gpus: 1 }, ...spec }));
    // Created in this order; priority decides first, then arrival.
    await created("low-1", {});
    await created("low-2", {});
    await created("high-1", { priority: 10 });
    await created("low-3", {});
    // The queue comes last: had it been there, the controller could admit low-1 and low-2 before high-1 arrived, as it
    // should. The four wait (the queue is missing, which their status says) until it exists, then go in order.
    await eventually("four jobs waiting for the missing queue", async () => {
      const waiting = (await client.list<FineTuneJob>(jobsPath(namespace))).items.filter((job) => admittedOf(job)?.message?.startsWith(`no FineTuneQueue named ${queue} exists`));
      return waiting.length === 4 ? true : undefined;
    });
    await client.create(queuePath(), queueManifest(queue, { gpus: 2, preemption: "LowerPriority" }));
    const admitted = await eventually("two admissions", async () => {
      const names = await admittedJobs();
      return names.length === 2 ? names : undefined;
    });
    expect(admitted).toEqual(["high-1", "low-1"]);
    const waiting = await eventually("positions", async () => {
      const [two, three] = await Promise.all([getJob("low-2"), getJob("low-3")]);
      return two.status?.queue?.position === 1 && three.status?.queue?.position === 2 ? [two, three] : undefined;
    });
    expect(waiting[0]!.status?.queue?.waitReason).toBe(`waiting for 1 GPU; 2 of 2 GPUs in use by ${namespace}/high-1, ${namespace}/low-1`);
    expect(admittedOf(waiting[0]!)).toMatchObject({ status: "False", reason: "Queued" });
    const table = await eventually("the queue's status", async () => {
      const out = kubectl(["get", "ftq", queue]).stdout;
      return /\s2\s+2\s+2\s+2\s/.test(out) ? out : undefined;
    });
    expect(table).toMatch(/NAME\s+GPUS\s+IN USE\s+ADMITTED\s+QUEUED\s+AGE/);
    const metrics = await registry.metrics();
    expect(metrics).toContain(`kubetune_queue_gpus_quota{queue="${queue}"} 2`);
    expect(metrics).toContain(`kubetune_queue_pending_jobs{queue="${queue}"} 2`);
  });

  it("admits the next job when one finishes, and fails one that can never fit", async () => {
    await setPhase("low-1", "Succeeded");
    await eventually("low-2 admitted", async () => (admittedOf(await getJob("low-2"))?.status === "True" ? true : undefined));
    expect((await getJob("low-2")).status?.queue).toBeUndefined();
    // The waiting job's position is written after the admission, in the same reconcile.
    await eventually("low-3 first in line", async () => ((await getJob("low-3")).status?.queue?.position === 1 ? true : undefined));
    await client.create(jobsPath(namespace), scriptedJobManifest("huge", namespace, { queueName: queue, resources: { gpus: 3 } }));
    const huge = await eventually("huge refused", async () => {
      const condition = admittedOf(await getJob("huge"));
      return condition?.reason === "ExceedsQueueQuota" ? condition : undefined;
    });
    expect(huge.message).toContain("asks for 3 GPUs but the queue's whole quota is 2 GPUs");
  });

  it("preempts the newest lower-priority job for a higher one, holding its quota until the trainer has stopped", async () => {
    // Running: high-1 (10) and low-2 (0). urgent (20) needs one GPU: low-2 is the one to stop.
    await setPhase("low-2", "Running");
    await client.create(jobsPath(namespace), scriptedJobManifest("urgent", namespace, { queueName: queue, resources: { gpus: 1 }, priority: 20 }));
    const preempted = await eventually("low-2 preempted", async () => {
      const condition = admittedOf(await getJob("low-2"));
      return condition?.reason === "Preempted" ? condition : undefined;
    });
    expect(preempted).toMatchObject({ status: "False", message: expect.stringContaining(`preempted by ${namespace}/urgent (priority 20`) });
    // The trainer is still stopping (phase Running): urgent waits, nothing else is preempted.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(admittedOf(await getJob("urgent"))?.status).toBe("False");
    expect((await getJob("urgent")).status?.queue?.waitReason).toContain(`waiting for preempted ${namespace}/low-2 to checkpoint and stop`);
    expect(admittedOf(await getJob("high-1"))?.status).toBe("True");
    // The job controller moves it to Queued once its pod is gone: urgent goes in, low-2 waits at the head of the line.
    await setPhase("low-2", "Queued");
    await eventually("urgent admitted", async () => (admittedOf(await getJob("urgent"))?.status === "True" ? true : undefined));
    await eventually("low-2 first in line", async () => ((await getJob("low-2")).status?.queue?.position === 1 ? true : undefined));
    const status = await eventually("the queue's counts", async () => {
      const current = (await client.get<FineTuneQueue>(queuePath(queue))).status;
      return current?.queued === 2 ? current : undefined;
    });
    expect(status).toMatchObject({ gpusInUse: 2, admitted: 2, queued: 2, preempted: 1 });
    expect(await registry.metrics()).toContain(`kubetune_queue_preemptions_total{queue="${queue}"} 1`);
  });
});

describe("Kueue mode against a real Kueue manager, playing the job controller's side by hand", () => {
  const GPU = "nvidia.com/gpu";
  const kueuePath = (plural: string, name?: string, namespace?: string) => resourcePath({ group: KUEUE_GROUP, version: KUEUE_VERSION, plural, name, namespace });
  const flavor = `ftq-flavor-${suffix}`;
  const clusterQueue = `ftq-cq-${suffix}`;
  const localQueue = "team-gpus";
  const priorityClasses = { [`ftq-low-${suffix}`]: 100, [`ftq-high-${suffix}`]: 1000 };
  let kueue: KueueManager | undefined;
  let namespace: string;
  let jobs: Informer<FineTuneJob>;
  let controller: KueueController;

  beforeAll(async () => {
    applyCrds();
    kueue = await startLocalKueue({ dir: path.join(cluster().dir, `kueue-queues-${suffix}`), kubeconfig: cluster().kubeconfig, client, log: () => {} });
    namespace = await createNamespace("queue-kueue");
    await client.create(kueuePath("resourceflavors"), {
      apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`,
      kind: "ResourceFlavor",
      metadata: { name: flavor },
      spec: { nodeLabels: { "kubetune.io/accelerator": "test-gpu" }, tolerations: [{ key: GPU, operator: "Exists", effect: "NoSchedule" }] },
    });
    await client.create(kueuePath("clusterqueues"), {
      apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`,
      kind: "ClusterQueue",
      metadata: { name: clusterQueue },
      spec: {
        namespaceSelector: {},
        preemption: { withinClusterQueue: "LowerPriority" },
        resourceGroups: [{ coveredResources: ["cpu", "memory", GPU], flavors: [{ name: flavor, resources: [{ name: "cpu", nominalQuota: "8" }, { name: "memory", nominalQuota: "32Gi" }, { name: GPU, nominalQuota: "1" }] }] }],
      },
    });
    await client.create(kueuePath("localqueues", undefined, namespace), { apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`, kind: "LocalQueue", metadata: { name: localQueue, namespace }, spec: { clusterQueue } });
    for (const [name, value] of Object.entries(priorityClasses)) {
      await client.create(kueuePath("workloadpriorityclasses"), { apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`, kind: "WorkloadPriorityClass", metadata: { name }, value });
    }
    await eventually("the ClusterQueue to become active", async () => {
      const queue = await client.get<{ status?: { conditions?: { type: string; status: string }[] } }>(kueuePath("clusterqueues", clusterQueue));
      return queue.status?.conditions?.some((c) => c.type === "Active" && c.status === "True") ? true : undefined;
    }, 60_000);
    jobs = new Informer<FineTuneJob>(client, { path: resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace }) });
    controller = new KueueController({ client, jobs: [jobs], namespaces: [namespace], isBuiltInQueue: () => false, events: new EventRecorder(client, "kubetune-test"), log: (line) => console.log(line) });
    await jobs.start();
    await controller.sync();
    controller.start();
  }, 30 * 60_000);

  afterAll(async () => {
    await controller?.stop();
    await jobs?.stop();
    if (!kueue) return;
    // Kueue's finalizers on its own objects are removed by the running manager: delete before it stops.
    for (const job of namespace ? (await client.list<FineTuneJob>(jobsPath(namespace))).items : []) await client.delete(jobsPath(namespace, job.metadata.name));
    if (namespace) await deleteWorkloads(namespace);
    await client.delete(kueuePath("localqueues", localQueue, namespace)).catch(() => undefined);
    for (const name of Object.keys(priorityClasses)) await client.delete(kueuePath("workloadpriorityclasses", name)).catch(() => undefined);
    for (const objectPath of [kueuePath("clusterqueues", clusterQueue), kueuePath("resourceflavors", flavor)]) {
      await client.delete(objectPath).catch(() => undefined);
      await eventually(`${objectPath} to be deleted`, async () => client.get(objectPath).then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)), 60_000).catch(() => undefined);
    }
    await kueue.stop();
  }, 180_000);

  /**
   * Deletes a namespace's Workloads, their finalizers first. Deleting the jobs would too (the
   * garbage collector follows the owner references), but only once the operator has released
   * Kueue's finalizer, and a Workload left behind keeps its ClusterQueue (and so the flavor) from
   * being deleted until the wait times out.
   */
  async function deleteWorkloads(inNamespace: string): Promise<void> {
    for (const workload of (await client.list<Workload>(kueuePath("workloads", undefined, inNamespace))).items) {
      const workloadPath = kueuePath("workloads", workload.metadata!.name, inNamespace);
      await client.patch(workloadPath, { metadata: { finalizers: null } }).catch(() => undefined);
      await client.delete(workloadPath).catch(() => undefined);
    }
  }

  const getJob = (name: string) => client.get<FineTuneJob>(jobsPath(namespace, name));
  const setPhase = (name: string, phase: string) => setJobPhase(namespace, name, phase);
  const kueueJob = (name: string, priorityClass?: string) => {
    const manifest = scriptedJobManifest(name, namespace, { queueName: localQueue, resources: { gpus: 1, cpu: "1", memory: "1Gi" } });
    if (priorityClass) manifest.metadata.labels = { [LABEL_PRIORITY_CLASS]: priorityClass };
    return manifest;
  };
  const waitAdmitted = (name: string, status: "True" | "False", reason?: string) =>
    eventually(`${name} Admitted=${status}${reason ? ` (${reason})` : ""}`, async () => {
      const job = await getJob(name);
      const condition = admittedOf(job);
      return condition?.status === status && (!reason || condition.reason === reason) ? job : undefined;
    }, 60_000);
  const [lowClass, highClass] = Object.keys(priorityClasses);

  it("creates an owned Workload per job and mirrors Kueue's admission, flavor and wait reason onto the jobs", async () => {
    await client.create(jobsPath(namespace), kueueJob("first", lowClass));
    const first = await waitAdmitted("first", "True");
    const workload = await client.get<Workload>(kueuePath("workloads", workloadName(first), namespace));
    expect(workload.metadata?.ownerReferences).toEqual([expect.objectContaining({ kind: "FineTuneJob", name: "first", uid: first.metadata.uid, controller: true })]);
    expect(workload.metadata?.finalizers).toContain("kueue.x-k8s.io/resource-in-use");
    expect(workload.spec).toMatchObject({ queueName: localQueue, priority: 100, priorityClassRef: { kind: "WorkloadPriorityClass", name: lowClass } });
    expect(JSON.stringify(workload.spec.podSets)).toContain(`"${GPU}":"1"`);
    expect(admittedOf(first)?.message).toContain(`ClusterQueue ${clusterQueue}, flavor ${flavor}`);
    expect(first.status?.admission).toEqual({ nodeSelector: { "kubetune.io/accelerator": "test-gpu" }, tolerations: [{ key: GPU, operator: "Exists", effect: "NoSchedule" }] });

    await client.create(jobsPath(namespace), kueueJob("second", lowClass));
    const second = await eventually("Kueue's reason on the waiting job", async () => {
      const job = await getJob("second");
      return job.status?.queue?.waitReason?.includes("insufficient unused quota") ? job : undefined;
    }, 60_000);
    expect(admittedOf(second)).toMatchObject({ status: "False", reason: "Queued", message: expect.stringContaining(`insufficient unused quota for ${GPU}`) });
  });

  it("on a preemption takes the admission back, and gives the quota back only once the job shows its trainer stopped", async () => {
    await setPhase("first", "Running");
    await client.create(jobsPath(namespace), kueueJob("urgent", highClass));
    const preempted = await waitAdmitted("first", "False", "Preempted");
    expect(admittedOf(preempted)?.message).toContain("(Preempted)");
    expect(preempted.status?.admission).toBeUndefined();
    // The trainer is still stopping: the reservation stays, and urgent waits.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const held = await client.get<Workload>(kueuePath("workloads", workloadName(preempted), namespace));
    expect(held.status?.admission?.clusterQueue).toBe(clusterQueue);
    expect(admittedOf(await getJob("urgent"))?.status).not.toBe("True");
    // The job controller shows Queued once the pod is gone: the eviction finishes, urgent is admitted, first waits again.
    await setPhase("first", "Queued");
    await waitAdmitted("urgent", "True");
    const requeued = await client.get<Workload>(kueuePath("workloads", workloadName(preempted), namespace));
    expect(requeued.status?.admission).toBeUndefined();
    expect(requeued.status?.conditions?.find((condition) => condition.type === "Requeued")).toMatchObject({ status: "True", reason: "Preempted" });
  });

  it("marks the Workload finished when the job succeeds, which frees the quota for the next", async () => {
    await setPhase("urgent", "Succeeded");
    const urgent = await getJob("urgent");
    const finished = await eventually("the Workload finished and released", async () => {
      const workload = await client.get<Workload>(kueuePath("workloads", workloadName(urgent), namespace));
      return workload.status?.conditions?.some((condition) => condition.type === "Finished" && condition.status === "True") && !workload.metadata?.finalizers?.length ? workload : undefined;
    }, 60_000);
    expect(finished.status?.conditions?.find((condition) => condition.type === "Finished")?.reason).toBe("Succeeded");
    // One of the two waiting jobs gets the GPU (which one is Kueue's requeuing order), the other keeps waiting.
    const states = await eventually("one waiting job admitted", async () => {
      const [first, second] = await Promise.all([getJob("first"), getJob("second")]);
      const admitted = [first, second].filter((job) => admittedOf(job)?.status === "True");
      return admitted.length === 1 ? [first, second].map((job) => admittedOf(job)) : undefined;
    }, 60_000).catch(async (error: unknown) => {
      const workloads = (await client.list<Workload>(kueuePath("workloads", undefined, namespace))).items;
      throw new Error(`${(error as Error).message}; workloads: ${JSON.stringify(workloads.map((workload) => [workload.metadata?.name, workload.metadata?.finalizers, workload.status?.conditions?.map((c) => `${c.type}=${c.status}:${c.reason}`)]))}`);
    });
    expect(states.map((condition) => condition?.reason).sort()).toEqual(["Admitted", "Queued"]);
  });

  describe("with the operator: Kueue admits, the trainer runs on the flavor's nodes, survives an eviction and resumes", () => {
    let opNamespace: string;
    let harness: OperatorHarness;
    let training: TinyTraining | undefined;
    const opClusterQueue = `ftq-cq-op-${suffix}`;

    beforeAll(async () => {
      opNamespace = await createNamespace("queue-kueue-op");
      await client.create(kueuePath("clusterqueues"), {
        apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`,
        kind: "ClusterQueue",
        metadata: { name: opClusterQueue },
        spec: {
          namespaceSelector: {},
          preemption: { withinClusterQueue: "LowerPriority" },
          resourceGroups: [{ coveredResources: ["cpu", "memory", GPU], flavors: [{ name: flavor, resources: [{ name: "cpu", nominalQuota: "8" }, { name: "memory", nominalQuota: "32Gi" }, { name: GPU, nominalQuota: "1" }] }] }],
        },
      });
      await client.create(kueuePath("localqueues", undefined, opNamespace), { apiVersion: `${KUEUE_GROUP}/${KUEUE_VERSION}`, kind: "LocalQueue", metadata: { name: localQueue, namespace: opNamespace }, spec: { clusterQueue: opClusterQueue } });
      await eventually("the operator's ClusterQueue to become active", async () => {
        const queue = await client.get<{ status?: { conditions?: { type: string; status: string }[] } }>(kueuePath("clusterqueues", opClusterQueue));
        return queue.status?.conditions?.some((c) => c.type === "Active" && c.status === "True") ? true : undefined;
      }, 60_000);
      // The flavor's node label is on the runner's node: a trainer pod without the flavor's nodeSelector would run too, one with it only here.
      harness = await startOperatorHarness([opNamespace], {}, { queues: { builtIn: true, kueue: true } }, { gpus: 1, labels: { "kubetune.io/accelerator": "test-gpu" } });
      training = await tinyTraining("queue-kueue-op");
    });

    afterAll(async () => {
      await harness?.stop();
      if (training) await rm(training.tiny.dir, { recursive: true, force: true });
      for (const job of opNamespace ? (await client.list<FineTuneJob>(jobsPath(opNamespace))).items : []) {
        await client.patch(jobsPath(opNamespace, job.metadata.name), { metadata: { finalizers: null } }).catch(() => undefined);
        await client.delete(jobsPath(opNamespace, job.metadata.name)).catch(() => undefined);
      }
      if (opNamespace) await deleteWorkloads(opNamespace);
      await client.delete(kueuePath("localqueues", localQueue, opNamespace)).catch(() => undefined);
      // Gone before the outer cleanup deletes the flavor, which Kueue keeps while a ClusterQueue names it.
      const opQueuePath = kueuePath("clusterqueues", opClusterQueue);
      await client.delete(opQueuePath).catch(() => undefined);
      await eventually(`${opQueuePath} to be deleted`, async () => client.get(opQueuePath).then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)), 60_000).catch(() => undefined);
    }, 120_000);

    const getOpJob = (name: string) => client.get<FineTuneJob>(jobsPath(opNamespace, name));
    const opJob = (name: string, priorityClass: string) => {
      const manifest = scriptedJobManifest(name, opNamespace, { queueName: localQueue, resources: { gpus: 1, cpu: "1", memory: "1Gi" } });
      manifest.metadata.labels = { [LABEL_PRIORITY_CLASS]: priorityClass };
      return manifest;
    };

    it("runs a job once Kueue admits it; a higher-priority job evicts it, and it resumes from its checkpoint to the adapter of an uninterrupted run", async () => {
      const lowJob = queuedTrainingJob(training!, opNamespace, "low-kueue", { queueName: localQueue, resources: { gpus: 1, cpu: "1", memory: "1Gi" } });
      lowJob.metadata.labels = { [LABEL_PRIORITY_CLASS]: lowClass! };
      await client.create(jobsPath(opNamespace), lowJob);
      await eventually("Kueue to admit low-kueue", async () => ((await getOpJob("low-kueue")).status?.phase === "Running" ? true : undefined), 60_000);
      const pod = await client.get<{ spec: { nodeSelector?: Record<string, string>; tolerations?: { key?: string }[] } }>(resourcePath({ group: "", version: "v1", plural: "pods", namespace: opNamespace, name: "low-kueue-train-1" }));
      expect(pod.spec.nodeSelector).toMatchObject({ "kubetune.io/accelerator": "test-gpu" });
      expect(pod.spec.tolerations).toEqual(expect.arrayContaining([expect.objectContaining({ key: GPU, operator: "Exists", effect: "NoSchedule" })]));
      // The same spec outside any queue, on no GPU (the node's one is Kueue's): the adapter to match.
      await client.create(jobsPath(opNamespace), queuedTrainingJob(training!, opNamespace, "uninterrupted-kueue", { resources: { gpus: 0 } }));
      const pid = await freezeAfterFirstCheckpoint(harness, opNamespace, "low-kueue-train-1");

      await client.create(jobsPath(opNamespace), opJob("ok-kueue-high", highClass!));
      // Kueue evicts the low job; the operator stops its trainer (SIGTERM: a checkpoint) and only then gives the quota back.
      await resumeOnSigterm(pid);
      const high = await eventually("ok-kueue-high to succeed", async () => {
        const current = await getOpJob("ok-kueue-high");
        return current.status?.phase === "Succeeded" ? current : undefined;
      }, 120_000);
      expect(high.status).toMatchObject({ attempts: 1, failedAttempts: 0 });
      const low = await waitForPhase(opNamespace, "low-kueue", ["Succeeded", "Failed"], 150_000);
      expect(low.status).toMatchObject({ phase: "Succeeded", attempts: 2, failedAttempts: 0, progress: { step: 40, totalSteps: 40 } });
      expect((await eventsOf(opNamespace, "low-kueue")).find((event) => event.reason === "Preempted")?.message).toContain("Kueue evicted Workload");
      // Attempt 1 saved a checkpoint on SIGTERM mid-run; attempt 2 started from it and ended on the uninterrupted run's adapter, byte for byte.
      const stopped = jsonEvents(harness, opNamespace, "low-kueue-train-1").find((event) => event.event === "stopped");
      expect(stopped).toMatchObject({ signal: "SIGTERM", checkpoint: expect.stringContaining("/outputs/low-kueue/checkpoints/step-") });
      expect(stopped!.step).toBeGreaterThanOrEqual(10);
      expect(stopped!.step).toBeLessThan(40);
      expect(jsonEvents(harness, opNamespace, "low-kueue-train-2").find((event) => event.event === "start")).toMatchObject({ step: stopped!.step, resumedFrom: stopped!.checkpoint });
      expect(await waitForPhase(opNamespace, "uninterrupted-kueue", ["Succeeded", "Failed"], 150_000)).toMatchObject({ status: { phase: "Succeeded", attempts: 1 } });
      const adapter = (name: string) => training!.store.get(`outputs/${name}/adapter_model.safetensors`);
      expect((await adapter("low-kueue")).equals(await adapter("uninterrupted-kueue"))).toBe(true);
      // Both Workloads finished, their quota released.
      const workloads = (await client.list<Workload>(kueuePath("workloads", undefined, opNamespace))).items;
      await eventually("both Workloads finished and released", async () => {
        const current = (await client.list<Workload>(kueuePath("workloads", undefined, opNamespace))).items;
        return current.length === 2 && current.every((workload) => workload.status?.conditions?.some((condition) => condition.type === "Finished" && condition.status === "True") && !workload.metadata?.finalizers?.length) ? true : undefined;
      }, 60_000);
      expect(workloads.map((workload) => workload.metadata?.ownerReferences?.[0]?.name).sort()).toEqual(["low-kueue", "ok-kueue-high"]);
    });
  });
});

describe("the operator with a FineTuneQueue: the queue admits, the job controller runs and stops trainers", () => {
  let namespace: string;
  let harness: OperatorHarness;
  let tiny: TinyJob;
  let store: S3ObjectStore;
  const twoGpus = `two-gpus-${suffix}`;
  const oneGpu = `one-gpu-${suffix}`;

  beforeAll(async () => {
    applyCrds();
    namespace = await createNamespace("queue-op");
    harness = await startOperatorHarness([namespace], {}, { queues: { builtIn: true } }, { gpus: 2 });
    ({ tiny, store } = await tinyTraining("queue-op"));
  });

  afterAll(async () => {
    await harness?.stop();
    for (const name of [twoGpus, oneGpu]) await client.delete(queuePath(name)).catch(() => undefined);
    if (tiny) await rm(tiny.dir, { recursive: true, force: true });
  });

  const getJob = (name: string) => client.get<FineTuneJob>(jobsPath(namespace, name));
  const job = (name: string, queue: string, spec: Record<string, unknown> = {}) => scriptedJobManifest(name, namespace, { queueName: queue, resources: { gpus: 1 }, ...spec });
  const realJob = (name: string, queue?: string) => queuedTrainingJob({ tiny, store }, namespace, name, queue ? { queueName: queue } : {});
  const adapter = (name: string) => store.get(`outputs/${name}/adapter_model.safetensors`);

  it("runs five 1-GPU jobs two at a time, in priority and then arrival order", async () => {
    // Created before their queue exists, so that the queue sees all five at once and only order decides.
    const jobs = [
      job("ok-low-1", twoGpus),
      job("ok-low-2", twoGpus),
      job("ok-high", twoGpus, { priority: 10 }),
      job("ok-low-3", twoGpus),
      job("ok-mid", twoGpus, { priority: 5 }),
    ];
    for (const manifest of jobs) await client.create(jobsPath(namespace), manifest);
    const waiting = await eventually("the jobs to wait for a missing queue", async () => {
      const listed = (await client.list<FineTuneJob>(jobsPath(namespace))).items;
      return listed.length === 5 && listed.every((each) => each.status?.phase === "Queued" && admittedOf(each)?.message.includes("no FineTuneQueue named")) ? listed : undefined;
    });
    expect(waiting.every((each) => (each.status?.attempts ?? 0) === 0)).toBe(true);

    await client.create(queuePath(), queueManifest(twoGpus, { gpus: 2 }));
    // Poll while they run: the order in which each is first seen admitted, and how many hold a GPU at once.
    const firstSeen = new Map<string, number>();
    let round = 0;
    let mostAtOnce = 0;
    await eventually("all five to succeed", async () => {
      round += 1;
      const listed = (await client.list<FineTuneJob>(jobsPath(namespace))).items;
      const pods = (await client.list<{ status?: { phase?: string }; metadata?: { labels?: Record<string, string> } }>(resourcePath({ group: "", version: "v1", plural: "pods", namespace }))).items;
      mostAtOnce = Math.max(mostAtOnce, pods.filter((pod) => pod.status?.phase === "Pending" || pod.status?.phase === "Running").length);
      for (const each of listed) if (admittedOf(each)?.status === "True" && !firstSeen.has(each.metadata.name!)) firstSeen.set(each.metadata.name!, round);
      return listed.every((each) => each.status?.phase === "Succeeded") ? true : undefined;
    }, 120_000);
    expect(mostAtOnce).toBeLessThanOrEqual(2);
    const order = ["ok-high", "ok-mid", "ok-low-1", "ok-low-2", "ok-low-3"];
    const rounds = order.map((name) => firstSeen.get(name)!);
    // Each job is admitted no earlier than the one before it in priority-then-arrival order.
    expect(rounds).toEqual([...rounds].sort((a, b) => a - b));
    expect(rounds[2]).toBeGreaterThan(rounds[1]!);
    const done = await Promise.all(order.map(getJob));
    expect(done.map((each) => [each.status?.attempts, each.status?.failedAttempts])).toEqual(order.map(() => [1, 0]));
    expect((await client.get<FineTuneQueue>(queuePath(twoGpus))).status).toMatchObject({ gpusInUse: 0, admitted: 0, queued: 0 });
  });

  it("fails a job that asks for more GPUs than the whole quota, with a clear reason", async () => {
    await client.create(jobsPath(namespace), job("ok-huge", twoGpus, { resources: { gpus: 3 } }));
    const failed = await eventually("ok-huge to fail", async () => {
      const current = await getJob("ok-huge");
      return current.status?.phase === "Failed" ? current : undefined;
    });
    expect(failed.status?.conditions?.find((condition) => condition.type === "Failed")).toMatchObject({
      reason: "ExceedsQueueQuota",
      message: expect.stringContaining(`asks for 3 GPUs but the queue's whole quota is 2 GPUs (FineTuneQueue ${twoGpus})`),
    });
    expect(failed.status?.attempts ?? 0).toBe(0);
  });

  it("preempts a training low-priority job for a high one; the low one checkpoints, queues again without a failure, and resumes to the adapter of an uninterrupted run", async () => {
    await client.create(queuePath(), queueManifest(oneGpu, { gpus: 1 }));
    // The same spec, uninterrupted and outside the queue (the node has a second GPU), runs alongside: the adapter to match.
    await client.create(jobsPath(namespace), realJob("uninterrupted"));
    await client.create(jobsPath(namespace), realJob("low", oneGpu));
    const pid = await freezeAfterFirstCheckpoint(harness, namespace, "low-train-1");
    const saved = await listKeys("outputs/low/checkpoints/");
    expect(saved.filter((key) => key.endsWith("/manifest.json")).length).toBeGreaterThan(0);
    await client.create(jobsPath(namespace), job("ok-urgent", oneGpu, { priority: 100 }));
    // The queue takes low's admission back, the job controller deletes its pod, the pod runner sends SIGTERM: it waits,
    // pending, until the trainer runs again, finishes its step and checkpoints.
    await resumeOnSigterm(pid);

    const requeued = await eventually("low back in the queue", async () => {
      const current = await getJob("low");
      return current.status?.phase === "Queued" && admittedOf(current)?.reason === "Queued" ? current : undefined;
    }, 60_000);
    // Back in line behind the job that preempted it, which the Preempted event names.
    expect(admittedOf(requeued)).toMatchObject({ status: "False", reason: "Queued", message: `waiting for 1 GPU; 1 of 1 GPUs in use by ${namespace}/ok-urgent` });
    expect(requeued.status?.queue).toEqual({ position: 1, waitReason: `waiting for 1 GPU; 1 of 1 GPUs in use by ${namespace}/ok-urgent` });
    expect((await eventsOf(namespace, "low")).find((event) => event.reason === "Preempted")?.message).toContain(`preempted by ${namespace}/ok-urgent (priority 100, above this job's 0)`);
    expect(requeued.status?.failedAttempts ?? 0).toBe(0);
    // The preempted attempt, past its first checkpoint and short of the end, saved one more on SIGTERM.
    const stopped = jsonEvents(harness, namespace, "low-train-1").find((event) => event.event === "stopped");
    expect(stopped).toMatchObject({ signal: "SIGTERM", checkpoint: expect.stringContaining("/outputs/low/checkpoints/step-") });
    expect(stopped!.step).toBeGreaterThanOrEqual(10);
    expect(stopped!.step).toBeLessThan(40);
    const urgent = await eventually("ok-urgent to succeed", async () => {
      const current = await getJob("ok-urgent");
      return current.status?.phase === "Succeeded" ? current : undefined;
    }, 60_000);
    expect(urgent.status).toMatchObject({ attempts: 1, failedAttempts: 0 });
    const low = await waitForPhase(namespace, "low", ["Succeeded", "Failed"], 150_000);
    expect(low.status).toMatchObject({ phase: "Succeeded", attempts: 2, failedAttempts: 0, progress: { step: 40, totalSteps: 40 } });
    expect((await eventsOf(namespace, "low")).map((event) => event.reason)).toEqual(expect.arrayContaining(["Admitted", "Preempted", "Completed"]));
    expect((await client.get<FineTuneQueue>(queuePath(oneGpu))).status?.preempted).toBe(1);
    // Attempt 2 resumed from the checkpoint saved on SIGTERM, and ended with the same adapter, byte for byte.
    expect(jsonEvents(harness, namespace, "low-train-2").find((event) => event.event === "start")).toMatchObject({ step: stopped!.step, resumedFrom: stopped!.checkpoint });
    expect(await waitForPhase(namespace, "uninterrupted", ["Succeeded", "Failed"], 150_000)).toMatchObject({ status: { phase: "Succeeded", attempts: 1 } });
    expect((await adapter("low")).equals(await adapter("uninterrupted"))).toBe(true);
  });

  /** The keys under a prefix of the test's store. */
  async function listKeys(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const object of store.list(prefix)) keys.push(object.key);
    return keys;
  }
});

/** The fields of the trainer's progress events (trainer/train/progress.ts) these tests read. */
interface TrainerEvent {
  event: string;
  step?: number;
  checkpoint?: string;
  resumedFrom?: string;
  signal?: string;
}

/**
 * Whether a signal is pending on a stopped process: Linux shows the process's pending signals
 * as a hex mask (ShdPnd; SigPnd for its main thread) in /proc/<pid>/status, bit n-1 for signal n.
 */
function signalPending(pid: number, signal: NodeJS.Signals): boolean {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const bit = 1n << BigInt(os.constants.signals[signal] - 1);
  return [...status.matchAll(/^(?:ShdPnd|SigPnd):\s*([0-9a-f]+)$/gm)].some((match) => (BigInt(`0x${match[1]}`) & bit) !== 0n);
}
