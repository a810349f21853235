import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { inject } from "vitest";
import { KubeClient, resourcePath } from "../../kube/client.ts";
import { S3ObjectStore } from "../../storage/s3-store.ts";

/** What the global setup started, as the tests see it. */
export interface ClusterInfo {
  dir: string;
  server: string;
  kubeconfig: string;
  kubectl: string;
  kubeApiserverVersion: string;
  s3: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string; bucket: string };
}

declare module "vitest" {
  export interface ProvidedContext {
    cluster: ClusterInfo;
  }
}

export function cluster(): ClusterInfo {
  return inject("cluster");
}

export function kubeClient(): KubeClient {
  return KubeClient.load(cluster().kubeconfig);
}

/** Runs the real kubectl against the test cluster. */
export function kubectl(args: string[], input?: string): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(cluster().kubectl, args, {
    input,
    encoding: "utf8",
    env: { ...process.env, KUBECONFIG: cluster().kubeconfig },
    timeout: 60_000,
  });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/**
 * Runs a command without blocking this process, whose event loop serves the pod runner and
 * the operator that the command may be talking to (through the API server).
 */
export function runAsync(command: string, args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { env: options.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 150_000);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ status: code ?? -1, stdout, stderr });
    });
  });
}

/** kubectl against the test cluster, without blocking this process (for logs served by an in-process pod runner). */
export function kubectlAsync(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return runAsync(cluster().kubectl, args, { env: { ...process.env, KUBECONFIG: cluster().kubeconfig } });
}

/** A fresh namespace with a unique name. */
export async function createNamespace(prefix: string, labels: Record<string, string> = {}): Promise<string> {
  const name = `${prefix}-${randomBytes(3).toString("hex")}`;
  await kubeClient().create(resourcePath({ group: "", version: "v1", plural: "namespaces" }), {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name, labels },
  });
  return name;
}

/** A store rooted at a unique prefix of the run's bucket. */
export function s3Store(prefix: string): S3ObjectStore {
  const { s3 } = cluster();
  return new S3ObjectStore(s3.bucket, `${prefix}-${randomBytes(3).toString("hex")}`, {
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
}

/** Polls fn until it returns a value other than undefined, or fails with what it last saw. */
export async function eventually<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await fn();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ""}`);
}
