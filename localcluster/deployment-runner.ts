import type { V1Deployment, V1Pod } from "@kubernetes/client-node";
import { createHash } from "node:crypto";
import { isNotFound, resourcePath, type KubeClient } from "../kube/client.ts";
import { Informer } from "../kube/informer.ts";

/**
 * What kube-controller-manager does for a Deployment, in the small: keep spec.replicas pods
 * of its pod template, replace pods that end (restartPolicy Always, which the pod runner does
 * not restart in place) or that run an older template (the Recreate strategy), delete its pods
 * with it (the garbage collector's part), and write its replica counts to status. There are
 * no ReplicaSets: pods are owned by the Deployment and named <deployment>-<template hash>-<random>.
 * With the pod runner, this runs a Helm chart's Deployment on a loopback control plane.
 */

export interface DeploymentRunnerOptions {
  client: KubeClient;
  /** Only Deployments in these namespaces. */
  namespaces: string[];
  log?: (message: string) => void;
}

const TEMPLATE_HASH = "pod-template-hash";

export class DeploymentRunner {
  private readonly deployments: Informer<V1Deployment>[];
  private readonly pods: Informer<V1Pod>[];
  private readonly syncing = new Map<string, Promise<void>>();
  /** Pods created but not yet in the cache, by deployment key, so that a quick second sync does not create them again. */
  private readonly expected = new Map<string, Set<string>>();
  private timer?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly options: DeploymentRunnerOptions) {
    this.deployments = options.namespaces.map((namespace) => new Informer<V1Deployment>(options.client, { path: resourcePath({ group: "apps", version: "v1", plural: "deployments", namespace }), log: options.log }));
    this.pods = options.namespaces.map((namespace) => new Informer<V1Pod>(options.client, { path: resourcePath({ group: "", version: "v1", plural: "pods", namespace }), log: options.log }));
    const enqueueDeployment = (deployment: V1Deployment) => this.enqueue(deployment.metadata?.namespace ?? "", deployment.metadata?.name ?? "");
    for (const informer of this.deployments) {
      informer.on({ add: enqueueDeployment, update: enqueueDeployment, delete: (deployment) => void this.deleteOwnedPods(deployment.metadata?.uid ?? "") });
    }
    const enqueueOwner = (pod: V1Pod) => {
      const owner = pod.metadata?.ownerReferences?.find((reference) => reference.kind === "Deployment" && reference.controller);
      if (owner) this.enqueue(pod.metadata?.namespace ?? "", owner.name);
    };
    for (const informer of this.pods) informer.on({ add: enqueueOwner, update: enqueueOwner, delete: enqueueOwner });
  }

  async start(): Promise<void> {
    await Promise.all([...this.deployments, ...this.pods].map((informer) => informer.start()));
    for (const informer of this.deployments) for (const deployment of informer.list()) this.enqueue(deployment.metadata?.namespace ?? "", deployment.metadata?.name ?? "");
    this.timer = setInterval(() => {
      for (const informer of this.deployments) for (const deployment of informer.list()) this.enqueue(deployment.metadata?.namespace ?? "", deployment.metadata?.name ?? "");
    }, 5000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await Promise.allSettled([...this.syncing.values()]);
    await Promise.all([...this.deployments, ...this.pods].map((informer) => informer.stop()));
  }

  /** The pods of a Deployment that are neither finished nor being deleted. */
  activePods(namespace: string, name: string): V1Pod[] {
    const deployment = this.deployment(namespace, name);
    return deployment ? this.owned(deployment).filter((pod) => isActive(pod)) : [];
  }

  private deployment(namespace: string, name: string): V1Deployment | undefined {
    return this.deployments.map((informer) => informer.get(namespace, name)).find(Boolean);
  }

  private owned(deployment: V1Deployment): V1Pod[] {
    const uid = deployment.metadata?.uid;
    return this.pods.flatMap((informer) => informer.list()).filter((pod) => pod.metadata?.ownerReferences?.some((reference) => reference.uid === uid));
  }

  private enqueue(namespace: string, name: string): void {
    if (this.stopped) return;
    const key = `${namespace}/${name}`;
    const next = (this.syncing.get(key) ?? Promise.resolve()).then(() => this.sync(namespace, name)).catch((error: unknown) => this.options.log?.(`deployment ${key}: ${(error as Error).message}`));
    this.syncing.set(key, next);
    void next.finally(() => {
      if (this.syncing.get(key) === next) this.syncing.delete(key);
    });
  }

  private async sync(namespace: string, name: string): Promise<void> {
    const deployment = this.deployment(namespace, name);
    if (!deployment || this.stopped) return;
    const { client } = this.options;
    const podPath = (podName?: string) => resourcePath({ group: "", version: "v1", plural: "pods", namespace, name: podName });
    const hash = templateHash(deployment);
    const owned = this.owned(deployment).filter((pod) => !pod.metadata?.deletionTimestamp);
    const stale = owned.filter((pod) => !isActive(pod) || pod.metadata?.labels?.[TEMPLATE_HASH] !== hash);
    const current = owned.filter((pod) => !stale.includes(pod));
    const wanted = deployment.metadata?.deletionTimestamp ? 0 : (deployment.spec?.replicas ?? 1);
    const key = `${namespace}/${name}`;
    const pending = [...(this.expected.get(key) ?? [])].filter((podName) => !this.pods.some((informer) => informer.get(namespace, podName)));
    this.expected.set(key, new Set(pending));
    const surplus = current.slice(wanted);
    for (const pod of [...stale, ...surplus]) await client.delete(podPath(pod.metadata?.name)).catch(ignoreNotFound);
    // Recreate: new pods only once the old template's pods are gone.
    const old = this.owned(deployment).filter((pod) => pod.metadata?.labels?.[TEMPLATE_HASH] !== hash && pod.status?.phase !== "Succeeded" && pod.status?.phase !== "Failed");
    if (old.length === 0) {
      for (let count = current.length + pending.length; count < wanted; count++) {
        const created = await client.create<V1Pod>(podPath(), podFor(deployment, hash));
        this.expected.get(key)!.add(created.metadata?.name ?? "");
      }
    }
    const ready = current.filter((pod) => pod.status?.conditions?.some((condition) => condition.type === "Ready" && condition.status === "True")).length;
    const status = { observedGeneration: deployment.metadata?.generation, replicas: Math.min(current.length, wanted), updatedReplicas: Math.min(current.length, wanted), readyReplicas: ready, availableReplicas: ready };
    const known = deployment.status ?? {};
    if (Object.entries(status).some(([field, value]) => (known as Record<string, unknown>)[field] !== value)) {
      await client.patch(resourcePath({ group: "apps", version: "v1", plural: "deployments", namespace, name, subresource: "status" }), { status }).catch(ignoreNotFound);
    }
  }

  private async deleteOwnedPods(uid: string): Promise<void> {
    const pods = this.pods.flatMap((informer) => informer.list()).filter((pod) => pod.metadata?.ownerReferences?.some((reference) => reference.uid === uid));
    for (const pod of pods) {
      await this.options.client.delete(resourcePath({ group: "", version: "v1", plural: "pods", namespace: pod.metadata?.namespace, name: pod.metadata?.name })).catch(ignoreNotFound);
    }
  }
}

function templateHash(deployment: V1Deployment): string {
  return createHash("sha256").update(JSON.stringify(deployment.spec?.template ?? {})).digest("hex").slice(0, 10);
}

function podFor(deployment: V1Deployment, hash: string): V1Pod {
  const template = deployment.spec?.template;
  const name = deployment.metadata?.name ?? "";
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      generateName: `${name}-${hash}-`,
      labels: { ...template?.metadata?.labels, [TEMPLATE_HASH]: hash },
      annotations: template?.metadata?.annotations,
      ownerReferences: [{ apiVersion: "apps/v1", kind: "Deployment", name, uid: deployment.metadata?.uid ?? "", controller: true, blockOwnerDeletion: true }],
    },
    spec: template?.spec,
  } as V1Pod;
}

function isActive(pod: V1Pod): boolean {
  return pod.status?.phase !== "Succeeded" && pod.status?.phase !== "Failed" && !pod.metadata?.deletionTimestamp;
}

function ignoreNotFound(error: unknown): void {
  if (!isNotFound(error)) throw error;
}
