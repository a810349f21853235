import type { V1Container, V1EnvVar, V1Node, V1Pod, V1PodCondition, V1Toleration } from "@kubernetes/client-node";
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ApiError, isNotFound, resourcePath, type KubeClient } from "../kube/client.ts";
import { Informer } from "../kube/informer.ts";
import { parseQuantity } from "../kube/quantity.ts";
import { KubeletServer, type KubeletTls, type LogLocation } from "./kubelet-server.ts";
import { mapMountedPath, MountError, mountVolumes } from "./volumes.ts";

/**
 * The local pod runner plays the scheduler and the kubelet of a one-node cluster, so that pods
 * created in a loopback API server (tests, `kubetune dev-cluster`) really run, as local
 * processes.
 *
 * What it models:
 * - A Node object with capacity (cpu, memory, simulated nvidia.com/gpu), labels and taints.
 * - Scheduling: resource requests against what is free, nodeSelector, required node affinity
 *   (matchExpressions), taints and tolerations. A pod that does not fit gets the scheduler's
 *   `PodScheduled=False, reason Unschedulable` condition and is retried as pods finish.
 *   A pod that fits is bound through the pods/binding subresource, as the scheduler does.
 * - Images: only images in the catalog "pull"; any other image leaves the container waiting
 *   with ErrImagePull, then ImagePullBackOff, for ever, as a kubelet would.
 * - The container's command and args, run with the pod's env (value, secretKeyRef,
 *   configMapKeyRef, fieldRef, envFrom), workingDir and runAsUser/runAsGroup (when the runner
 *   is root). A missing Secret or ConfigMap gives CreateContainerConfigError.
 * - Volumes as folders (volumes.ts): emptyDir, secret, configMap and projected volumes,
 *   service account tokens included (requested again at 80% of their life, as the kubelet
 *   rotates them); paths under a mount path in env values, args, command
 *   and workingDir are rewritten to the folder that backs it (a process cannot see a mount
 *   namespace here), and a mounted service account token comes with KUBECONFIG for
 *   in-cluster configuration. A missing Secret or ConfigMap leaves the pod ContainerCreating.
 * - Container logs: kept per pod while the pod exists, and served on the kubelet's log endpoint
 *   (kubelet-server.ts, with kubeletTls) so that `kubectl logs` works through the API server.
 * - Status as a kubelet writes it: Pending, Running (podIP 127.0.0.1, Ready), Succeeded or
 *   Failed with the exit code, reason (Completed, Error, OOMKilled) and termination message
 *   (FallbackToLogsOnError takes the log's tail).
 * - memory limits: the process group's resident memory is sampled every second and the group
 *   is killed with reason OOMKilled above the limit.
 * - activeDeadlineSeconds: the pod is killed and fails with reason DeadlineExceeded.
 * - Graceful deletion: SIGTERM to the process group, SIGKILL after the grace period, then the
 *   pod object is removed with grace period 0, as the kubelet confirms a deletion.
 *
 * What it does not model: container images and file systems (the process sees this machine's
 * files; readOnlyRootFilesystem and capabilities are not enforced), restartPolicy other than
 * Never (containers are never restarted in place), init and sidecar containers (only the first
 * container runs), probes, `kubectl exec`, log timestamps, networking (every pod is 127.0.0.1
 * and shares this machine's ports), CPU limits, preemption and node heartbeats.
 */

/** How the runner "pulls" an image: folders prepended to PATH, and the default entrypoint. */
export interface ImageSpec {
  path?: string[];
  entrypoint?: string[];
}

export interface PodRunnerOptions {
  client: KubeClient;
  /** Folder for per-pod scratch folders and logs. */
  workDir: string;
  /** The images this node can pull; any other image fails to pull. */
  images: Record<string, ImageSpec>;
  nodeName?: string;
  capacity?: { cpu?: string; memory?: string; gpus?: number };
  nodeLabels?: Record<string, string>;
  taints?: { key: string; value?: string; effect: "NoSchedule" | "NoExecute" | "PreferNoSchedule" }[];
  /** Only pods in these namespaces are run; all when unset. */
  namespaces?: string[];
  /** Serve container logs to the API server (kubectl logs) with this serving certificate and client CA. */
  kubeletTls?: KubeletTls;
  log?: (message: string) => void;
}

interface RunningContainer {
  child: ChildProcess;
  podUid: string;
  startedAt: Date;
  logFile: string;
  killReason?: "OOMKilled" | "DeadlineExceeded";
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  timers: NodeJS.Timeout[];
}

const GPU = "nvidia.com/gpu";

export class PodRunner {
  readonly nodeName: string;
  private readonly pods: Informer<V1Pod>;
  private readonly running = new Map<string, RunningContainer>();
  /** Uids of pods this runner started; their final status is written when they exit. */
  private readonly started = new Set<string>();
  /** Pods whose sync is in progress, chained so that one pod's syncs never overlap. */
  private readonly syncing = new Map<string, Promise<void>>();
  private retryTimer?: NodeJS.Timeout;
  private stopped = false;
  private kubelet?: KubeletServer;

  constructor(private readonly options: PodRunnerOptions) {
    this.nodeName = options.nodeName ?? "kubetune-local";
    this.pods = new Informer<V1Pod>(options.client, { path: "/api/v1/pods", log: options.log });
  }

  async start(): Promise<void> {
    mkdirSync(this.options.workDir, { recursive: true, mode: 0o755 });
    if (process.getuid?.() === 0) assertTraversable(this.options.workDir);
    let kubeletPort: number | undefined;
    if (this.options.kubeletTls) {
      this.kubelet = new KubeletServer(this.options.kubeletTls, (namespace, name, container) => this.logLocation(namespace, name, container));
      kubeletPort = await this.kubelet.listen();
    }
    await this.registerNode(kubeletPort);
    this.pods.on({
      add: (pod) => this.enqueue(pod),
      update: (pod) => this.enqueue(pod),
      delete: (pod) => void this.kill(pod, 0),
    });
    await this.pods.start();
    // Unschedulable pods and pods waiting on a Secret are retried, as resources free up.
    this.retryTimer = setInterval(() => {
      for (const pod of this.pods.list()) if (!this.running.has(podKey(pod)) && isActive(pod)) this.enqueue(pod);
    }, 2000);
    this.retryTimer.unref();
  }

  /** Stops watching and kills every container it runs (the node goes away). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.retryTimer);
    await this.pods.stop();
    await Promise.all([...this.running.values()].map((container) => this.terminate(container, 0)));
    await Promise.allSettled([...this.syncing.values()]);
    await this.kubelet?.close();
  }

  /** The folder that holds a pod's logs and volumes. */
  podDir(namespace: string, name: string): string {
    return path.join(this.options.workDir, namespace, name);
  }

  /** The container's output so far. */
  logs(namespace: string, name: string): string {
    const file = path.join(this.podDir(namespace, name), "container.log");
    return existsSync(file) ? readFileSync(file, "utf8") : "";
  }

  /** What the kubelet's log endpoint serves for a container, as a kubelet answers. */
  private logLocation(namespace: string, name: string, container: string): LogLocation {
    const pod = this.pods.get(namespace, name);
    if (!pod || pod.spec?.nodeName !== this.nodeName) return { status: 404, message: `pod "${name}" in namespace "${namespace}" is not on node ${this.nodeName}` };
    if (pod.spec?.containers[0]?.name !== container) return { status: 400, message: `container "${container}" in pod "${name}" is not available` };
    const file = path.join(this.podDir(namespace, name), "container.log");
    const uid = pod.metadata?.uid;
    if (!this.started.has(uid ?? "")) {
      const waiting = pod.status?.containerStatuses?.[0]?.state?.waiting;
      return { status: 400, message: `container "${container}" in pod "${name}" is waiting to start: ${waiting?.reason ?? "ContainerCreating"}` };
    }
    return { file, running: () => this.running.get(podKey(pod))?.podUid === uid };
  }

  /** Process ids of running containers, by namespace/name (tests use it to kill a trainer). */
  processes(): Map<string, number> {
    return new Map([...this.running].map(([key, container]) => [key, container.child.pid ?? 0]));
  }

  private enqueue(pod: V1Pod): void {
    if (this.stopped) return;
    const namespace = pod.metadata?.namespace ?? "";
    if (this.options.namespaces && !this.options.namespaces.includes(namespace)) return;
    const key = podKey(pod);
    const previous = this.syncing.get(key) ?? Promise.resolve();
    const next = previous
      .then(() => this.sync(key))
      .catch((error: unknown) => {
        if (!(error instanceof ApiError && (error.status === 404 || error.status === 409))) {
          this.options.log?.(`pod ${key}: ${(error as Error).message}`);
        }
      });
    this.syncing.set(key, next);
    void next.finally(() => {
      if (this.syncing.get(key) === next) this.syncing.delete(key);
    });
  }

  private async sync(key: string): Promise<void> {
    const [namespace, name] = key.split("/") as [string, string];
    const pod = this.pods.get(namespace, name);
    if (!pod || this.stopped) return;
    const nodeName = pod.spec?.nodeName;
    if (nodeName && nodeName !== this.nodeName) return;

    if (pod.metadata?.deletionTimestamp) {
      await this.kill(pod, pod.metadata.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30);
      if (nodeName) await this.confirmDeletion(pod);
      return;
    }
    if (!isActive(pod) || this.running.has(key) || this.started.has(pod.metadata?.uid ?? "")) return;
    if (!nodeName) return this.schedule(pod);
    if (pod.status?.containerStatuses?.some((status) => status.state?.running || status.state?.terminated)) {
      // It ran under a previous runner whose processes are gone: like a lost node.
      return this.writeFailed(pod, { reason: "NodeLost", exitCode: 137, message: "the local pod runner restarted and lost this container" });
    }
    await this.startContainer(pod);
  }

  private async registerNode(kubeletPort: number | undefined): Promise<void> {
    const capacity = {
      cpu: this.options.capacity?.cpu ?? String(os.cpus().length),
      memory: this.options.capacity?.memory ?? `${Math.floor(os.totalmem() / 2 ** 20)}Mi`,
      pods: "110",
      [GPU]: String(this.options.capacity?.gpus ?? 0),
    };
    const node: V1Node = {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name: this.nodeName,
        labels: {
          "kubernetes.io/hostname": this.nodeName,
          "kubernetes.io/os": "linux",
          "kubernetes.io/arch": "amd64",
          "kubetune.io/local-pod-runner": "true",
          ...this.options.nodeLabels,
        },
      },
      spec: { taints: this.options.taints },
    };
    const client = this.options.client;
    const nodePath = resourcePath({ group: "", version: "v1", plural: "nodes", name: this.nodeName });
    try {
      await client.create(resourcePath({ group: "", version: "v1", plural: "nodes" }), node);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 409)) throw error;
      await client.patch(nodePath, { metadata: { labels: node.metadata?.labels }, spec: { taints: this.options.taints ?? null } });
    }
    const now = new Date().toISOString();
    await client.patch(`${nodePath}/status`, {
      status: {
        capacity,
        allocatable: capacity,
        conditions: [{ type: "Ready", status: "True", reason: "KubeletReady", message: "local pod runner is ready", lastHeartbeatTime: now, lastTransitionTime: now }],
        addresses: [{ type: "InternalIP", address: "127.0.0.1" }, { type: "Hostname", address: this.nodeName }],
        ...(kubeletPort ? { daemonEndpoints: { kubeletEndpoint: { Port: kubeletPort } } } : {}),
        nodeInfo: { kubeletVersion: "kubetune-local-pod-runner", operatingSystem: "linux", architecture: "amd64", containerRuntimeVersion: "local-process", kernelVersion: os.release(), osImage: os.type(), machineID: "", systemUUID: "", bootID: "", kubeProxyVersion: "" },
      },
    });
  }

  /** Binds the pod to this node if it fits, else writes the scheduler's Unschedulable condition. */
  private async schedule(pod: V1Pod): Promise<void> {
    const problems = this.fitProblems(pod);
    const client = this.options.client;
    const { namespace, name } = pod.metadata as { namespace: string; name: string };
    if (problems.length > 0) {
      const message = `0/1 nodes are available: 1 ${problems.join(", 1 ")}.`;
      const current = pod.status?.conditions?.find((condition) => condition.type === "PodScheduled");
      if (current?.message === message) return;
      await client.patch(resourcePath({ group: "", version: "v1", plural: "pods", namespace, name, subresource: "status" }), {
        status: {
          phase: "Pending",
          conditions: [{ type: "PodScheduled", status: "False", reason: "Unschedulable", message, lastTransitionTime: new Date().toISOString() }],
        },
      });
      return;
    }
    await client.create(resourcePath({ group: "", version: "v1", plural: "pods", namespace, name, subresource: "binding" }), {
      apiVersion: "v1",
      kind: "Binding",
      metadata: { name, namespace, uid: pod.metadata?.uid },
      target: { apiVersion: "v1", kind: "Node", name: this.nodeName },
    });
  }

  private fitProblems(pod: V1Pod): string[] {
    const problems: string[] = [];
    const labels = { "kubernetes.io/hostname": this.nodeName, "kubetune.io/local-pod-runner": "true", ...this.options.nodeLabels };
    for (const [labelKey, value] of Object.entries(pod.spec?.nodeSelector ?? {})) {
      if (labels[labelKey as keyof typeof labels] !== value) {
        problems.push("node(s) didn't match Pod's node affinity/selector");
        break;
      }
    }
    const terms = pod.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms;
    if (terms && !terms.some((term) => (term.matchExpressions ?? []).every((expression) => matchesExpression(labels, expression)))) {
      if (!problems.length) problems.push("node(s) didn't match Pod's node affinity/selector");
    }
    for (const taint of this.options.taints ?? []) {
      if (taint.effect === "PreferNoSchedule") continue;
      if (!(pod.spec?.tolerations ?? []).some((toleration) => tolerates(toleration, taint))) {
        problems.push(`node(s) had untolerated taint {${taint.key}: ${taint.value ?? ""}}`);
      }
    }
    const capacity = {
      cpu: parseQuantity(this.options.capacity?.cpu ?? String(os.cpus().length)),
      memory: parseQuantity(this.options.capacity?.memory ?? String(os.totalmem())),
      [GPU]: this.options.capacity?.gpus ?? 0,
    };
    const used = { cpu: 0, memory: 0, [GPU]: 0 };
    for (const other of this.pods.list()) {
      if (other.spec?.nodeName !== this.nodeName || !isActive(other)) continue;
      const requests = podRequests(other);
      for (const resource of Object.keys(used) as (keyof typeof used)[]) used[resource] += requests[resource];
    }
    const wanted = podRequests(pod);
    const names: Record<keyof typeof used, string> = { cpu: "cpu", memory: "memory", [GPU]: GPU };
    for (const resource of Object.keys(used) as (keyof typeof used)[]) {
      if (wanted[resource] > 0 && used[resource] + wanted[resource] > capacity[resource]) problems.push(`Insufficient ${names[resource]}`);
    }
    return problems;
  }

  private async startContainer(pod: V1Pod): Promise<void> {
    const container = pod.spec?.containers[0] as V1Container;
    const { namespace, name, uid } = pod.metadata as { namespace: string; name: string; uid: string };
    const image = this.options.images[container.image ?? ""];
    if (!image) {
      const waiting = pod.status?.containerStatuses?.[0]?.state?.waiting?.reason;
      const reason = waiting === "ErrImagePull" || waiting === "ImagePullBackOff" ? "ImagePullBackOff" : "ErrImagePull";
      if (waiting === "ImagePullBackOff") return;
      return this.writeWaiting(pod, reason, `${reason === "ErrImagePull" ? "failed to pull" : "Back-off pulling"} image "${container.image}": not in the local pod runner's image catalog`);
    }
    const command = [...(container.command ?? image.entrypoint ?? []), ...(container.args ?? [])];
    if (command.length === 0) return this.writeWaiting(pod, "CreateContainerError", "no command: the container sets none and the image has no entrypoint");

    const dir = this.podDir(namespace, name);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const user = container.securityContext?.runAsUser ?? pod.spec?.securityContext?.runAsUser;
    const group = container.securityContext?.runAsGroup ?? pod.spec?.securityContext?.runAsGroup ?? user;
    const asUser = process.getuid?.() === 0 && user !== undefined ? { uid: user, gid: group ?? user } : undefined;

    let volumes: Awaited<ReturnType<typeof mountVolumes>>;
    try {
      volumes = await mountVolumes(this.options.client, pod, container, dir, asUser);
    } catch (error) {
      if (error instanceof MountError) return this.writeWaiting(pod, "ContainerCreating", error.message);
      throw error;
    }
    const mapPath = (value: string) => mapMountedPath(value, volumes.mounts);

    let env: Record<string, string>;
    try {
      env = { ...volumes.env, ...(await this.resolveEnv(pod, container)) };
    } catch (error) {
      return this.writeWaiting(pod, "CreateContainerConfigError", (error as Error).message);
    }
    for (const [variable, value] of Object.entries(env)) env[variable] = mapPath(value);
    const hostPath = [...(image.path ?? []), process.env.PATH ?? "/usr/bin:/bin"].join(":");

    const logFile = path.join(dir, "container.log");
    // A new container, even of a pod with an earlier one's name, starts a new log.
    const log = createWriteStream(logFile, { flags: "w" });
    const child = spawn(mapPath(command[0]!), command.slice(1).map(mapPath), {
      cwd: container.workingDir ? mapPath(container.workingDir) : dir,
      env: { PATH: hostPath, HOME: dir, HOSTNAME: name, ...env },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      ...asUser,
    });
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once("error", (error) => {
        log.write(`${error.message}\n`);
        resolve({ code: 128, signal: null });
      });
      child.once("exit", (code, signal) => resolve({ code, signal }));
    });
    const startedAt = new Date();
    const running: RunningContainer = { child, podUid: uid, startedAt, logFile, exited, timers: [] };
    this.running.set(podKey(pod), running);
    this.started.add(uid);
    this.options.log?.(`pod ${namespace}/${name}: started ${command.join(" ")} (pid ${child.pid})`);

    const memoryLimit = container.resources?.limits?.memory;
    if (memoryLimit && child.pid) {
      const limit = parseQuantity(memoryLimit);
      const pid = child.pid;
      running.timers.push(
        setInterval(() => {
          if (groupResidentBytes(pid) > limit) {
            running.killReason = "OOMKilled";
            signalGroup(pid, "SIGKILL");
          }
        }, 1000),
      );
    }
    const tokens = volumes.tokenRefresh;
    if (tokens) {
      running.timers.push(setInterval(() => void tokens.refresh().catch((error: unknown) => this.options.log?.(`pod ${namespace}/${name}: refreshing its service account token: ${(error as Error).message}`)), tokens.everyMs));
    }
    const deadline = pod.spec?.activeDeadlineSeconds;
    if (deadline !== undefined && child.pid) {
      const pid = child.pid;
      const elapsed = (Date.now() - new Date(pod.status?.startTime ?? startedAt).getTime()) / 1000;
      running.timers.push(
        setTimeout(() => {
          running.killReason = "DeadlineExceeded";
          signalGroup(pid, "SIGTERM");
          setTimeout(() => signalGroup(pid, "SIGKILL"), 1000 * (pod.spec?.terminationGracePeriodSeconds ?? 30)).unref();
        }, Math.max(0, deadline - elapsed) * 1000),
      );
    }
    await this.writeRunning(pod, startedAt).catch((error: unknown) => this.options.log?.(`pod ${namespace}/${name}: ${(error as Error).message}`));
    void exited.then(async ({ code, signal }) => {
      for (const timer of running.timers) clearTimeout(timer);
      log.end();
      signalGroup(child.pid ?? 0, "SIGKILL");
      this.running.delete(podKey(pod));
      const exitCode = code ?? 128 + (signal ? os.constants.signals[signal] : 0);
      const reason = running.killReason === "OOMKilled" ? "OOMKilled" : exitCode === 0 ? "Completed" : "Error";
      let message = "";
      if (exitCode !== 0 && (container.terminationMessagePolicy ?? "File") === "FallbackToLogsOnError") {
        message = await tailOf(logFile, 80, 2048);
      }
      const current = this.pods.get(namespace, name);
      if (!current || current.metadata?.uid !== uid || this.stopped) return;
      await this.writeTerminated(current, { exitCode, reason, message, startedAt, signal, deadlineExceeded: running.killReason === "DeadlineExceeded" }).catch(
        (error: unknown) => this.options.log?.(`pod ${namespace}/${name}: ${(error as Error).message}`),
      );
      if (current.metadata?.deletionTimestamp) await this.confirmDeletion(current);
    });
  }

  private async resolveEnv(pod: V1Pod, container: V1Container): Promise<Record<string, string>> {
    const namespace = pod.metadata?.namespace ?? "default";
    const env: Record<string, string> = {};
    const secrets = new Map<string, Record<string, string> | undefined>();
    const configMaps = new Map<string, Record<string, string> | undefined>();
    const read = async (kind: "secrets" | "configmaps", objectName: string) => {
      const cache = kind === "secrets" ? secrets : configMaps;
      if (!cache.has(objectName)) {
        try {
          const object = await this.options.client.get<{ data?: Record<string, string> }>(
            resourcePath({ group: "", version: "v1", plural: kind, namespace, name: objectName }),
          );
          const data = object.data ?? {};
          cache.set(objectName, kind === "secrets" ? Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")])) : data);
        } catch (error) {
          if (!isNotFound(error)) throw error;
          cache.set(objectName, undefined);
        }
      }
      return cache.get(objectName);
    };
    const singular = { secrets: "secret", configmaps: "configmap" } as const;
    for (const source of container.envFrom ?? []) {
      const ref = source.secretRef ? { kind: "secrets" as const, ...source.secretRef } : source.configMapRef ? { kind: "configmaps" as const, ...source.configMapRef } : undefined;
      if (!ref?.name) continue;
      const data = await read(ref.kind, ref.name);
      if (!data && !ref.optional) throw new Error(`${singular[ref.kind]} "${ref.name}" not found`);
      for (const [variable, value] of Object.entries(data ?? {})) env[`${source.prefix ?? ""}${variable}`] = value;
    }
    for (const variable of container.env ?? []) {
      const value = await this.envValue(pod, variable, read, singular);
      if (value !== undefined) env[variable.name] = expandReferences(value, env);
    }
    return env;
  }

  private async envValue(
    pod: V1Pod,
    variable: V1EnvVar,
    read: (kind: "secrets" | "configmaps", name: string) => Promise<Record<string, string> | undefined>,
    singular: Record<"secrets" | "configmaps", string>,
  ): Promise<string | undefined> {
    if (variable.value !== undefined) return variable.value;
    const from = variable.valueFrom;
    if (!from) return "";
    const keyRef = from.secretKeyRef ? { kind: "secrets" as const, ...from.secretKeyRef } : from.configMapKeyRef ? { kind: "configmaps" as const, ...from.configMapKeyRef } : undefined;
    if (keyRef) {
      const data = await read(keyRef.kind, keyRef.name ?? "");
      if (!data) {
        if (keyRef.optional) return undefined;
        throw new Error(`${singular[keyRef.kind]} "${keyRef.name}" not found`);
      }
      if (!(keyRef.key in data)) {
        if (keyRef.optional) return undefined;
        throw new Error(`couldn't find key ${keyRef.key} in ${singular[keyRef.kind]} ${pod.metadata?.namespace}/${keyRef.name}`);
      }
      return data[keyRef.key];
    }
    if (from.fieldRef) {
      const fields: Record<string, string | undefined> = {
        "metadata.name": pod.metadata?.name,
        "metadata.namespace": pod.metadata?.namespace,
        "metadata.uid": pod.metadata?.uid,
        "spec.nodeName": this.nodeName,
        "spec.serviceAccountName": pod.spec?.serviceAccountName,
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
      };
      const annotation = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(from.fieldRef.fieldPath);
      if (annotation) return (annotation[1] === "labels" ? pod.metadata?.labels : pod.metadata?.annotations)?.[annotation[2]!] ?? "";
      return fields[from.fieldRef.fieldPath] ?? "";
    }
    return "";
  }

  private statusPath(pod: V1Pod): string {
    return resourcePath({ group: "", version: "v1", plural: "pods", namespace: pod.metadata?.namespace, name: pod.metadata?.name, subresource: "status" });
  }

  private async writeWaiting(pod: V1Pod, reason: string, message: string): Promise<void> {
    const container = pod.spec?.containers[0];
    const current = pod.status?.containerStatuses?.[0]?.state?.waiting;
    if (current?.reason === reason && current.message === message) return;
    await this.options.client.patch(this.statusPath(pod), {
      status: {
        phase: "Pending",
        hostIP: "127.0.0.1",
        conditions: conditions({ PodScheduled: "True", Initialized: "True", ContainersReady: "False", Ready: "False" }),
        containerStatuses: [{ name: container?.name, image: container?.image, imageID: "", ready: false, restartCount: 0, started: false, state: { waiting: { reason, message } } }],
      },
    });
  }

  private async writeRunning(pod: V1Pod, startedAt: Date): Promise<void> {
    const container = pod.spec?.containers[0];
    await this.options.client.patch(this.statusPath(pod), {
      status: {
        phase: "Running",
        hostIP: "127.0.0.1",
        podIP: "127.0.0.1",
        podIPs: [{ ip: "127.0.0.1" }],
        startTime: pod.status?.startTime ?? startedAt.toISOString(),
        conditions: conditions({ PodScheduled: "True", Initialized: "True", ContainersReady: "True", Ready: "True" }),
        containerStatuses: [{ name: container?.name, image: container?.image, imageID: `local://${container?.image}`, containerID: `local://${process.pid}`, ready: true, started: true, restartCount: 0, state: { running: { startedAt: startedAt.toISOString() } } }],
      },
    });
  }

  private async writeTerminated(
    pod: V1Pod,
    result: { exitCode: number; reason: string; message: string; startedAt: Date; signal: NodeJS.Signals | null; deadlineExceeded: boolean },
  ): Promise<void> {
    const container = pod.spec?.containers[0];
    const failed = result.exitCode !== 0 || result.deadlineExceeded;
    await this.options.client.patch(this.statusPath(pod), {
      status: {
        phase: failed ? "Failed" : "Succeeded",
        ...(result.deadlineExceeded ? { reason: "DeadlineExceeded", message: `Pod was active on the node longer than the specified deadline` } : {}),
        conditions: conditions({ PodScheduled: "True", Initialized: "True", ContainersReady: "False", Ready: "False" }, "PodCompleted"),
        containerStatuses: [
          {
            name: container?.name,
            image: container?.image,
            imageID: `local://${container?.image}`,
            ready: false,
            started: false,
            restartCount: 0,
            state: {
              terminated: {
                exitCode: result.exitCode,
                reason: result.reason,
                ...(result.message ? { message: result.message } : {}),
                ...(result.signal ? { signal: os.constants.signals[result.signal] } : {}),
                startedAt: result.startedAt.toISOString(),
                finishedAt: new Date().toISOString(),
              },
            },
          },
        ],
      },
    });
  }

  private async writeFailed(pod: V1Pod, result: { reason: string; exitCode: number; message: string }): Promise<void> {
    await this.options.client.patch(this.statusPath(pod), {
      status: {
        phase: "Failed",
        reason: result.reason,
        message: result.message,
        conditions: conditions({ PodScheduled: "True", Initialized: "True", ContainersReady: "False", Ready: "False" }, "PodCompleted"),
      },
    });
  }

  /** Ends a pod's container: SIGTERM, then SIGKILL after graceSeconds. */
  private async kill(pod: V1Pod, graceSeconds: number): Promise<void> {
    const container = this.running.get(podKey(pod));
    if (container && container.podUid === pod.metadata?.uid) await this.terminate(container, graceSeconds);
  }

  private async terminate(container: RunningContainer, graceSeconds: number): Promise<void> {
    const pid = container.child.pid ?? 0;
    signalGroup(pid, graceSeconds > 0 ? "SIGTERM" : "SIGKILL");
    const killTimer = setTimeout(() => signalGroup(pid, "SIGKILL"), graceSeconds * 1000);
    await container.exited;
    clearTimeout(killTimer);
  }

  /** What the kubelet does once a deleted pod's containers are gone: remove it for good. */
  private async confirmDeletion(pod: V1Pod): Promise<void> {
    if (this.running.has(podKey(pod))) return;
    try {
      await this.options.client.delete(resourcePath({ group: "", version: "v1", plural: "pods", namespace: pod.metadata?.namespace, name: pod.metadata?.name }), {
        gracePeriodSeconds: 0,
        preconditions: { uid: pod.metadata?.uid },
      });
    } catch (error) {
      if (!isNotFound(error) && !(error instanceof ApiError && error.status === 409)) throw error;
    }
  }
}

/**
 * Pods with a runAsUser run as that user, who must be able to reach the pod folders: every
 * folder above workDir must be searchable by others (mkdtemp makes 0700 folders, which are not).
 */
function assertTraversable(dir: string): void {
  for (let current = path.resolve(dir); ; current = path.dirname(current)) {
    if ((statSync(current).mode & 0o001) === 0) {
      throw new Error(`the pod runner's folder ${dir} is not reachable by non-root pods: ${current} is not searchable by others (chmod o+x ${current}, or choose another folder)`);
    }
    if (current === path.dirname(current)) return;
  }
}

function podKey(pod: V1Pod): string {
  return `${pod.metadata?.namespace}/${pod.metadata?.name}`;
}

function isActive(pod: V1Pod): boolean {
  return pod.status?.phase !== "Succeeded" && pod.status?.phase !== "Failed";
}

function conditions(states: Record<string, "True" | "False">, reason?: string): V1PodCondition[] {
  const now = new Date().toISOString() as unknown as Date;
  return Object.entries(states).map(([type, status]) => ({ type, status, lastTransitionTime: now, ...(reason && status === "False" ? { reason } : {}) }));
}

function podRequests(pod: V1Pod): { cpu: number; memory: number; [GPU]: number } {
  const total = { cpu: 0, memory: 0, [GPU]: 0 };
  for (const container of pod.spec?.containers ?? []) {
    const requests = { ...container.resources?.limits, ...container.resources?.requests };
    total.cpu += requests.cpu ? parseQuantity(requests.cpu) : 0;
    total.memory += requests.memory ? parseQuantity(requests.memory) : 0;
    total[GPU] += requests[GPU] ? parseQuantity(requests[GPU]) : 0;
  }
  return total;
}

function matchesExpression(labels: Record<string, string>, expression: { key: string; operator: string; values?: string[] }): boolean {
  const value = labels[expression.key];
  switch (expression.operator) {
    case "In":
      return value !== undefined && (expression.values ?? []).includes(value);
    case "NotIn":
      return value === undefined || !(expression.values ?? []).includes(value);
    case "Exists":
      return value !== undefined;
    case "DoesNotExist":
      return value === undefined;
    default:
      return false;
  }
}

function tolerates(toleration: V1Toleration, taint: { key: string; value?: string; effect: string }): boolean {
  if (toleration.effect && toleration.effect !== taint.effect) return false;
  if (toleration.operator === "Exists") return !toleration.key || toleration.key === taint.key;
  return toleration.key === taint.key && (toleration.value ?? "") === (taint.value ?? "");
}

/** $(VAR) references to earlier variables, as the kubelet expands them. */
function expandReferences(value: string, env: Record<string, string>): string {
  return value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (match, variable: string) => env[variable] ?? match);
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  if (!pid) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is gone.
  }
}

/** Resident memory of every process in the group, from /proc. */
function groupResidentBytes(groupId: number): number {
  let total = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[2]) !== groupId) continue;
      total += Number(fields[21]) * 4096;
    } catch {
      // The process ended while we looked.
    }
  }
  return total;
}

async function tailOf(file: string, lines: number, bytes: number): Promise<string> {
  const handle = await open(file, "r").catch(() => undefined);
  if (!handle) return "";
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, bytes);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return buffer.toString("utf8").split("\n").slice(-lines).join("\n").trim();
  } finally {
    await handle.close();
  }
}
