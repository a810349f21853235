import type { V1Container, V1KeyToPath, V1Pod, V1Volume } from "@kubernetes/client-node";
import { chownSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { isNotFound, resourcePath, type KubeClient } from "../kube/client.ts";
import { kubeconfigYaml } from "./controlplane.ts";

/**
 * The volumes of the local pod runner's containers, as folders under the pod's folder: a
 * process cannot see a mount namespace, so each mount path maps to the folder that backs it,
 * and the runner rewrites paths under a mount path in env values, args, command and
 * workingDir (`--flag=/mount/file` included).
 *
 * Supported: emptyDir; secret and configMap (keys or items); projected volumes of those, of
 * downwardAPI fields and of serviceAccountToken (a TokenRequest bound to the pod, as the
 * kubelet makes, and made again once 80% of its life has passed, as the kubelet rotates it:
 * tokenRefresh). In-cluster configuration reads fixed paths under
 * /var/run/secrets/kubernetes.io/serviceaccount that a local process cannot have, so a
 * container with a service account token mounted there gets KUBECONFIG pointing at a
 * kubeconfig with the same token, the same CA and the API server's loopback address.
 */

export const SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount";

/** A volume whose source is missing: the kubelet reports FailedMount and retries. */
export class MountError extends Error {}

export interface MountedVolumes {
  /** Mount path to the folder that backs it. */
  mounts: Map<string, string>;
  /** Extra environment, such as KUBECONFIG for in-cluster configuration. */
  env: Record<string, string>;
  /** Projected service account tokens to request again every `everyMs` while the container runs (the kubelet's rotation). */
  tokenRefresh?: { everyMs: number; refresh: () => Promise<void> };
}

/** The kubelet replaces a projected token once this share of its life has passed. */
const TOKEN_REFRESH_AT = 0.8;
/** A TokenRequest's expirationSeconds when the volume sets none (the kubelet's default). */
const DEFAULT_TOKEN_SECONDS = 3607;

export async function mountVolumes(
  client: KubeClient,
  pod: V1Pod,
  container: V1Container,
  podDir: string,
  owner: { uid: number; gid: number } | undefined,
): Promise<MountedVolumes> {
  const mounts = new Map<string, string>();
  const env: Record<string, string> = {};
  const namespace = pod.metadata?.namespace ?? "default";
  const tokens: { file: string; source: TokenSource }[] = [];
  for (const mount of container.volumeMounts ?? []) {
    const volume = pod.spec?.volumes?.find((candidate) => candidate.name === mount.name);
    if (!volume) continue;
    const hostDir = path.join(podDir, "volumes", mount.name);
    mkdirSync(hostDir, { recursive: true, mode: 0o755 });
    const files = await volumeFiles(client, pod, namespace, volume);
    for (const [relative, content] of Object.entries(files)) {
      const file = path.join(hostDir, relative);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, content, { mode: 0o644 });
      if (owner) chownSync(file, owner.uid, owner.gid);
    }
    if (owner) chownSync(hostDir, owner.uid, owner.gid);
    for (const source of volume.projected?.sources ?? []) {
      if (source.serviceAccountToken) tokens.push({ file: path.join(hostDir, source.serviceAccountToken.path), source: source.serviceAccountToken });
    }
    const subPath = mount.subPath ? path.join(hostDir, mount.subPath) : hostDir;
    mounts.set(mount.mountPath, subPath);
    if (mount.mountPath === SERVICE_ACCOUNT_MOUNT && files.token !== undefined) {
      const kubeconfig = path.join(podDir, "in-cluster.kubeconfig");
      const cluster = client.config.getCurrentCluster()!;
      writeFileSync(kubeconfig, kubeconfigYaml(cluster.server, Buffer.from(files["ca.crt"] ?? ""), files.token.toString(), "in-cluster"), { mode: 0o600 });
      if (owner) chownSync(kubeconfig, owner.uid, owner.gid);
      env.KUBECONFIG = kubeconfig;
    }
  }
  if (!tokens.length) return { mounts, env };
  const refresh = async () => {
    for (const { file, source } of tokens) {
      // Replaced in one rename, as the kubelet's atomic writer swaps the volume's files: a reader never sees half a token.
      const next = `${file}.next`;
      writeFileSync(next, await serviceAccountToken(client, pod, source), { mode: 0o644 });
      if (owner) chownSync(next, owner.uid, owner.gid);
      renameSync(next, file);
    }
  };
  const everyMs = Math.min(...tokens.map(({ source }) => (source.expirationSeconds ?? DEFAULT_TOKEN_SECONDS) * 1000 * TOKEN_REFRESH_AT));
  return { mounts, env, tokenRefresh: { everyMs, refresh } };
}

/** Rewrites a path under a mount path (alone or as the value of --flag=) to the folder behind it. */
export function mapMountedPath(value: string, mounts: ReadonlyMap<string, string>): string {
  const flag = /^(--?[A-Za-z0-9-]+=)(\/.*)$/.exec(value);
  if (flag) return flag[1]! + mapMountedPath(flag[2]!, mounts);
  for (const [mountPath, hostDir] of mounts) {
    if (value === mountPath || value.startsWith(`${mountPath}/`)) return hostDir + value.slice(mountPath.length);
  }
  return value;
}

async function volumeFiles(client: KubeClient, pod: V1Pod, namespace: string, volume: V1Volume): Promise<Record<string, Buffer>> {
  if (volume.secret) {
    const data = await readData(client, namespace, "secrets", volume.secret.secretName ?? "", volume.secret.optional, volume.name);
    return select(data, volume.secret.items);
  }
  if (volume.configMap) {
    const data = await readData(client, namespace, "configmaps", volume.configMap.name ?? "", volume.configMap.optional, volume.name);
    return select(data, volume.configMap.items);
  }
  if (volume.projected) {
    const files: Record<string, Buffer> = {};
    for (const source of volume.projected.sources ?? []) {
      if (source.secret) Object.assign(files, select(await readData(client, namespace, "secrets", source.secret.name ?? "", source.secret.optional, volume.name), source.secret.items));
      if (source.configMap) Object.assign(files, select(await readData(client, namespace, "configmaps", source.configMap.name ?? "", source.configMap.optional, volume.name), source.configMap.items));
      for (const item of source.downwardAPI?.items ?? []) files[item.path] = Buffer.from(downwardField(pod, item.fieldRef?.fieldPath ?? ""));
      if (source.serviceAccountToken) files[source.serviceAccountToken.path] = Buffer.from(await serviceAccountToken(client, pod, source.serviceAccountToken));
    }
    return files;
  }
  return {};
}

async function readData(client: KubeClient, namespace: string, kind: "secrets" | "configmaps", name: string, optional: boolean | undefined, volume: string): Promise<Record<string, Buffer> | undefined> {
  try {
    const object = await client.get<{ data?: Record<string, string>; binaryData?: Record<string, string> }>(resourcePath({ group: "", version: "v1", plural: kind, namespace, name }));
    const decode = (value: string, base64: boolean) => (base64 ? Buffer.from(value, "base64") : Buffer.from(value));
    return {
      ...Object.fromEntries(Object.entries(object.data ?? {}).map(([key, value]) => [key, decode(value, kind === "secrets")])),
      ...Object.fromEntries(Object.entries(object.binaryData ?? {}).map(([key, value]) => [key, decode(value, true)])),
    };
  } catch (error) {
    if (!isNotFound(error)) throw error;
    if (optional) return undefined;
    throw new MountError(`MountVolume.SetUp failed for volume "${volume}": ${kind === "secrets" ? "secret" : "configmap"} "${name}" not found`);
  }
}

function select(data: Record<string, Buffer> | undefined, items: V1KeyToPath[] | undefined): Record<string, Buffer> {
  if (!data) return {};
  if (!items) return data;
  return Object.fromEntries(items.filter((item) => data[item.key] !== undefined).map((item) => [item.path, data[item.key]!]));
}

function downwardField(pod: V1Pod, fieldPath: string): string {
  const fields: Record<string, string | undefined> = { "metadata.name": pod.metadata?.name, "metadata.namespace": pod.metadata?.namespace, "metadata.uid": pod.metadata?.uid };
  return fields[fieldPath] ?? "";
}

type TokenSource = { audience?: string; expirationSeconds?: number };

async function serviceAccountToken(client: KubeClient, pod: V1Pod, source: TokenSource): Promise<string> {
  const namespace = pod.metadata?.namespace;
  const account = pod.spec?.serviceAccountName ?? "default";
  const request = await client.create<{ status: { token: string } }>(`${resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace, name: account })}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: {
      ...(source.audience ? { audiences: [source.audience] } : {}),
      expirationSeconds: source.expirationSeconds ?? DEFAULT_TOKEN_SECONDS,
      boundObjectRef: { apiVersion: "v1", kind: "Pod", name: pod.metadata?.name, uid: pod.metadata?.uid },
    },
  });
  return request.status.token;
}
