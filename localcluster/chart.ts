import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { parseAllDocuments, stringify } from "yaml";
import { isAlreadyExists, resourcePath, type KubeClient, type KubeObject } from "../kube/client.ts";
import { DeploymentRunner } from "./deployment-runner.ts";

/**
 * A Helm chart on a loopback control plane: `helm template` renders it with the given values
 * and the objects are applied server-side, CRDs first (waiting until they are established), as
 * `helm install` would create them. With the DeploymentRunner and the pod runner, its
 * Deployment then runs as pods, under its ServiceAccount, with its flags.
 */

export interface RenderChartOptions {
  helm: string;
  chart: string;
  release: string;
  namespace: string;
  /** The API server's version, for the chart's kubeVersion constraint. */
  kubeVersion: string;
  values: Record<string, unknown>;
}

export async function renderChart(options: RenderChartOptions): Promise<KubeObject[]> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-chart-"));
  try {
    const valuesFile = path.join(dir, "values.yaml");
    await writeFile(valuesFile, stringify(options.values));
    const args = ["template", options.release, options.chart, "--namespace", options.namespace, "--kube-version", options.kubeVersion, "--include-crds", "--values", valuesFile];
    const { stdout } = await promisify(execFile)(options.helm, args, { maxBuffer: 64 * 2 ** 20 }).catch((error: Error & { stderr?: string }) => {
      throw new Error(`helm template ${options.chart} failed: ${error.stderr?.trim() || error.message}`);
    });
    return parseAllDocuments(stdout)
      .map((document) => document.toJS() as KubeObject | null)
      .filter((object): object is KubeObject => Boolean(object?.kind));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Applies the objects server-side (namespaced ones into `namespace` unless they name one), CRDs first. */
export async function applyObjects(client: KubeClient, objects: KubeObject[], namespace: string, fieldManager = "kubetune-local"): Promise<void> {
  const crds = objects.filter((object) => object.kind === "CustomResourceDefinition");
  const rest = objects.filter((object) => object.kind !== "CustomResourceDefinition");
  const resources = new Discovery(client);
  const apply = async (object: KubeObject) => {
    const resource = await resources.find(object.apiVersion ?? "", object.kind ?? "");
    const objectNamespace = resource.namespaced ? (object.metadata?.namespace ?? namespace) : undefined;
    const body = resource.namespaced ? { ...object, metadata: { ...object.metadata, namespace: objectNamespace } } : object;
    await client.patch(`${resource.path(objectNamespace)}/${encodeURIComponent(object.metadata?.name ?? "")}`, body, "apply", { fieldManager, force: true });
  };
  for (const crd of crds) await apply(crd);
  for (const crd of crds) await waitEstablished(client, crd.metadata?.name ?? "");
  for (const object of rest) await apply(object);
}

async function waitEstablished(client: KubeClient, name: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const crd = await client.get<{ status?: { conditions?: { type: string; status: string }[] } }>(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`);
    if (crd.status?.conditions?.some((condition) => condition.type === "Established" && condition.status === "True")) return;
    if (Date.now() > deadline) throw new Error(`CustomResourceDefinition ${name} was not established within ${timeoutMs / 1000}s`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Which REST path serves a kind, from the API server's discovery documents. */
class Discovery {
  private readonly groups = new Map<string, Promise<{ name: string; kind: string; namespaced: boolean }[]>>();

  constructor(private readonly client: KubeClient) {}

  async find(apiVersion: string, kind: string): Promise<{ namespaced: boolean; path(namespace?: string): string }> {
    const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
    if (!this.groups.has(apiVersion)) {
      this.groups.set(apiVersion, this.client.get<{ resources: { name: string; kind: string; namespaced: boolean }[] }>(base).then((list) => list.resources));
    }
    const resource = (await this.groups.get(apiVersion)!).find((candidate) => candidate.kind === kind && !candidate.name.includes("/"));
    if (!resource) throw new Error(`the API server does not serve ${kind} in ${apiVersion}`);
    return {
      namespaced: resource.namespaced,
      path: (namespace) => (resource.namespaced ? `${base}/namespaces/${encodeURIComponent(namespace ?? "default")}/${resource.name}` : `${base}/${resource.name}`),
    };
  }
}

export interface InstalledChart {
  objects: KubeObject[];
  deployments: DeploymentRunner;
  /** Stops running its Deployments and deletes their pods (what the chart applied stays). */
  stop(): Promise<void>;
}

/** Renders the chart, applies it into its namespace (created if missing), and runs its Deployments' pods. */
export async function installChart(client: KubeClient, options: RenderChartOptions & { log?: (message: string) => void }): Promise<InstalledChart> {
  await client.create(resourcePath({ group: "", version: "v1", plural: "namespaces" }), { apiVersion: "v1", kind: "Namespace", metadata: { name: options.namespace } }).catch((error: unknown) => {
    if (!isAlreadyExists(error)) throw error;
  });
  const objects = await renderChart(options);
  await applyObjects(client, objects, options.namespace, `helm-${options.release}`);
  const deployments = new DeploymentRunner({ client, namespaces: [options.namespace], log: options.log });
  await deployments.start();
  return {
    objects,
    deployments,
    async stop() {
      await deployments.stop();
      for (const object of objects.filter((candidate) => candidate.kind === "Deployment")) {
        await client.delete(resourcePath({ group: "apps", version: "v1", plural: "deployments", namespace: options.namespace, name: object.metadata?.name })).catch(() => undefined);
        await client.delete(resourcePath({ group: "", version: "v1", plural: "pods", namespace: options.namespace }) + `?labelSelector=${encodeURIComponent(`app.kubernetes.io/instance=${options.release}`)}`).catch(() => undefined);
      }
    },
  };
}

/** Waits until an operator's metrics say it leads (kubetune_leader 1): then it reconciles. */
export async function waitUntilLeading(probeUrl: string, timeoutMs = 180_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const text = await (await fetch(`${probeUrl}/metrics`)).text();
      if (/^kubetune_leader 1$/m.test(text)) return;
      last = "it runs but does not lead yet";
    } catch (error) {
      last = (error as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`the operator at ${probeUrl} did not become leader within ${timeoutMs / 1000}s (${last})`);
}
