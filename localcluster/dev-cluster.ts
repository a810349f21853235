import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CRD_FILE } from "../api/index.ts";
import { resourcePath } from "../kube/client.ts";
import { startOperator } from "../operator/operator.ts";
import { S3ObjectStore } from "../storage/s3-store.ts";
import { createBucket, startLocalCluster } from "./cluster.ts";
import { PodRunner } from "./pod-runner.ts";
import { freePort, isAlive } from "./process.ts";

/**
 * `kubetune dev-cluster`: a whole kubetune installation on loopback — a real kube-apiserver +
 * etcd, MinIO, the CRD, the operator and the local pod runner — run by one supervisor process
 * in the background, so that `eval "$(kubetune dev-cluster up)"` prepares a shell.
 */

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const DEV_IMAGE = "kubetune.local/kubetune:dev";
export const DEV_BUCKET = "kubetune";

interface DevClusterState {
  pid: number;
  dir: string;
  kubeconfig: string;
  kubectl: string;
  s3: { endpoint: string; accessKeyId: string; secretAccessKey: string; region: string };
  kubeApiserverVersion: string;
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
export async function devClusterUp(options: { timeoutMs?: number } = {}): Promise<string> {
  const dir = devClusterDir();
  const existing = readState(dir);
  if (existing && isAlive(existing.pid)) return exportLines(existing);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const log = openSync(path.join(dir, "supervisor.log"), "a");
  const child = spawn(process.execPath, [path.join(repoRoot, "bin/kubetune.mjs"), "dev-cluster", "serve", "--dir", dir], {
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
  return `running (pid ${state.pid}): kube-apiserver ${state.kubeApiserverVersion}, S3 ${state.s3.endpoint}, kubeconfig ${state.kubeconfig}`;
}

/** The supervisor: starts everything, writes the state file, and stops it all on SIGTERM. */
export async function devClusterServe(dir: string): Promise<void> {
  const log = (line: string) => console.log(`${new Date().toISOString()} ${line}`);
  const cluster = await startLocalCluster({ dir, log });
  const stops: (() => Promise<void>)[] = [() => cluster.stop()];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch((error: unknown) => log(`stopping: ${(error as Error).message}`));
  };
  try {
    const { client, s3 } = cluster;
    const crd = readFileSync(path.join(repoRoot, CRD_FILE), "utf8");
    const { parse } = await import("yaml");
    await client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", parse(crd));
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
      capacity: { cpu: String(os.cpus().length), memory: `${Math.floor(os.totalmem() / 2 ** 20)}Mi`, gpus: 0 },
      log,
    });
    await runner.start();
    stops.push(() => runner.stop());
    const tokenKeyFile = path.join(dir, "progress-token.key");
    writeFileSync(tokenKeyFile, randomBytes(32), { mode: 0o600 });
    const progressPort = await freePort();
    const pki = path.join(dir, "pki");
    const operator = await startOperator({
      kubeconfig: cluster.controlPlane.kubeconfig,
      namespaces: [],
      probeAddress: "127.0.0.1:0",
      progressAddress: `127.0.0.1:${progressPort}`,
      progressTls: { certFile: path.join(pki, "serving.crt"), keyFile: path.join(pki, "serving.key") },
      progressTokenKeyFile: tokenKeyFile,
      leaderElection: { enabled: false, namespace: "default", name: "kubetune-operator" },
      concurrency: 4,
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
    stops.push(() => operator.stop());
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
    };
    writeFileSync(stateFile(dir), JSON.stringify(state, null, 2), { mode: 0o600 });
    log(`dev cluster ready: kube-apiserver ${state.kubeApiserverVersion}, MinIO ${s3.endpoint}, operator progress on :${progressPort}`);
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
