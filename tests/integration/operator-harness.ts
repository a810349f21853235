import type { V1Pod } from "@kubernetes/client-node";
import { chmod, mkdtemp, readdir, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { expect } from "vitest";
import { API_VERSION, CRD_FILE, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { resourcePath } from "../../kube/client.ts";
import { kubeletTls, makePki } from "../../localcluster/pki.ts";
import { PodRunner } from "../../localcluster/pod-runner.ts";
import { freePort } from "../../localcluster/process.ts";
import type { DecideSettings } from "../../operator/finetunejob/decide.ts";
import { PROGRESS_AUDIENCE } from "../../operator/finetunejob/pods.ts";
import { startOperator, type RunningOperator } from "../../operator/operator.ts";
import type { S3ObjectStore } from "../../storage/s3-store.ts";
import { writeTinyJob, type TinyJob } from "../../trainer/testing/tiny-job.ts";
import { cluster, eventually, kubeClient, kubectl, s3Store } from "./harness.ts";

/** A stand-in trainer (tests/fixtures/scripted-trainer.ts) and the real kubetune CLI, as images the pod runner can run. */
export const SCRIPTED_IMAGE = "kubetune.local/scripted-trainer:test";
export const KUBETUNE_IMAGE = "kubetune.local/kubetune:test";

const repo = process.cwd();

export interface OperatorHarness {
  runner: PodRunner;
  operator: RunningOperator;
  options: Parameters<typeof startOperator>[0];
  ca: string;
  /** Restarts the operator, optionally with other settings. */
  restart(settings?: Partial<DecideSettings>): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The CRD, an S3 credentials Secret (`s3-creds`) in each namespace, a local pod runner for
 * those namespaces, and an operator watching them, with its progress endpoint on loopback.
 */
export async function startOperatorHarness(
  namespaces: string[],
  settings: Partial<DecideSettings> = {},
  overrides: Partial<Parameters<typeof startOperator>[0]> = {},
  /** The pod runner's node: GPUs (nvidia.com/gpu) it advertises, 0 by default, and extra labels. */
  node: { gpus?: number; labels?: Record<string, string> } = {},
): Promise<OperatorHarness> {
  expect(kubectl(["apply", "--server-side", "--force-conflicts", "-f", CRD_FILE]).status).toBe(0);
  const client = kubeClient();
  const { s3 } = cluster();
  for (const namespace of namespaces) {
    await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "s3-creds" },
      stringData: { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
    });
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-operator-test-"));
  await chmod(dir, 0o755);
  const pki = await makePki(path.join(dir, "pki"));
  const ca = await readFile(pki.caCert, "utf8");
  const runner = new PodRunner({
    client,
    workDir: path.join(dir, "pods"),
    nodeName: `node-${namespaces[0]}`,
    namespaces,
    capacity: { cpu: "8", memory: "16Gi", gpus: node.gpus ?? 0 },
    ...(node.labels ? { nodeLabels: node.labels } : {}),
    kubeletTls: kubeletTls(path.join(cluster().dir, "pki")),
    images: {
      [SCRIPTED_IMAGE]: { entrypoint: [process.execPath, "--import", path.join(repo, "node_modules/tsx/dist/esm/index.mjs"), path.join(repo, "tests/fixtures/scripted-trainer.ts")] },
      [KUBETUNE_IMAGE]: { entrypoint: [process.execPath, path.join(repo, "bin/kubetune.mjs")] },
    },
  });
  await runner.start();
  const progressPort = await freePort();
  const options: Parameters<typeof startOperator>[0] = {
    kubeconfig: cluster().kubeconfig,
    namespaces,
    probeAddress: "127.0.0.1:0",
    progressAddress: `127.0.0.1:${progressPort}`,
    progressTls: { certFile: pki.servingCert, keyFile: pki.servingKey },
    leaderElection: { enabled: false, namespace: namespaces[0]!, name: "kubetune-operator" },
    concurrency: 4,
    log: () => {},
    settings: {
      defaultImage: SCRIPTED_IMAGE,
      progressUrl: `https://127.0.0.1:${progressPort}`,
      progressCa: ca,
      defaultStorage: { endpoint: s3.endpoint, region: "us-east-1", forcePathStyle: true },
      terminationGraceSeconds: 10,
      preflight: false,
      imagePullTimeoutSeconds: 3,
      unschedulableTimeoutSeconds: 3,
      retryBackoffBaseSeconds: 1,
      retryBackoffMaxSeconds: 5,
      ...settings,
    },
    ...overrides,
  };
  const harness: OperatorHarness = {
    runner,
    operator: await startOperator(options),
    options,
    ca,
    async restart(changes = {}) {
      await harness.operator.stop();
      harness.operator = await startOperator({ ...options, settings: { ...options.settings, ...changes } });
    },
    async stop() {
      await harness.operator.stop();
      await runner.stop();
    },
  };
  return harness;
}

/**
 * A token of the pod's service account bound to the pod, as the kubelet projects into a trainer
 * (a TokenRequest with boundObjectRef; for the progress audience unless told otherwise). The API
 * server stops accepting it once the pod is deleted.
 */
export async function podToken(namespace: string, podName: string, audiences: string[] = [PROGRESS_AUDIENCE]): Promise<string> {
  const client = kubeClient();
  const pod = await client.get<V1Pod>(resourcePath({ group: "", version: "v1", plural: "pods", namespace, name: podName }));
  const account = pod.spec?.serviceAccountName ?? "default";
  const request = await client.create<{ status: { token: string } }>(`${resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace, name: account })}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { audiences, expirationSeconds: 3600, boundObjectRef: { apiVersion: "v1", kind: "Pod", name: podName, uid: pod.metadata?.uid } },
  });
  return request.status.token;
}

export const jobsPath = (namespace: string, name?: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });

export function getJob(namespace: string, name: string): Promise<FineTuneJob> {
  return kubeClient().get<FineTuneJob>(jobsPath(namespace, name));
}

export function waitForPhase(namespace: string, name: string, phases: string[], timeoutMs = 60_000): Promise<FineTuneJob> {
  return eventually(
    `job ${name} to reach ${phases.join("/")}`,
    async () => {
      const job = await getJob(namespace, name);
      return phases.includes(job.status?.phase ?? "") ? job : undefined;
    },
    timeoutMs,
  );
}

export async function eventsOf(namespace: string, name: string): Promise<{ reason: string; message: string }[]> {
  const events = await kubeClient().list<{ reason: string; message: string; involvedObject: { name: string } }>(resourcePath({ group: "", version: "v1", plural: "events", namespace }));
  return events.items.filter((event) => event.involvedObject.name === name);
}

/** A job for the scripted trainer (its name picks the behaviour), with MinIO credentials from `s3-creds`. */
export function scriptedJobManifest(name: string, namespace: string, spec: Record<string, unknown> = {}): FineTuneJob {
  const { s3 } = cluster();
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace },
    spec: {
      baseModel: { uri: `s3://${s3.bucket}/models/tiny` },
      dataset: { train: `s3://${s3.bucket}/data/train.jsonl` },
      method: { type: "lora" },
      output: { uri: `s3://${s3.bucket}/outputs/${name}` },
      storage: { secretRef: { name: "s3-creds" }, endpoint: s3.endpoint, forcePathStyle: true },
      ...spec,
    },
  } as FineTuneJob;
}

/** The tiny model and dataset that the real trainer (`kubetune train`) fine-tunes, in MinIO. */
export interface TinyTraining {
  tiny: TinyJob;
  store: S3ObjectStore;
}

/** Writes the tiny job's model and dataset to a store of the test's own (remove tiny.dir after). */
export async function tinyTraining(prefix: string): Promise<TinyTraining> {
  const tiny = await writeTinyJob();
  const store = s3Store(prefix);
  for (const folder of ["model", "data"]) {
    for (const file of await readdir(path.join(tiny.dir, folder))) await store.put(`${folder}/${file}`, await readFile(path.join(tiny.dir, folder, file)));
  }
  return { tiny, store };
}

/**
 * A job for the real trainer on the tiny model: 40 deterministic steps with dropout,
 * accumulation and evaluation, a checkpoint every 10. Same spec, same adapter, whatever the
 * job's name, queue or interruptions; `spec` adds to it.
 */
export function trainingJob(training: TinyTraining, namespace: string, name: string, spec: Record<string, unknown> = {}): FineTuneJob {
  const { tiny, store } = training;
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace },
    spec: {
      ...tiny.manifest.spec,
      baseModel: { uri: `${store.uri}/model` },
      dataset: { train: `${store.uri}/data/train.jsonl`, format: "text", maxSeqLength: 32, evalFraction: 0.2 },
      method: { type: "lora", lora: { r: 4, alpha: 8, dropout: 0.1, targetModules: ["q_proj", "v_proj"] } },
      hyperparameters: { maxSteps: 40, batchSize: 2, gradientAccumulation: 2, learningRate: 0.01, warmupSteps: 3, evalEverySteps: 10, seed: 3 },
      checkpoint: { everySteps: 10, keep: 2 },
      output: { uri: `${store.uri}/outputs/${name}` },
      storage: { secretRef: { name: "s3-creds" } },
      ...spec,
    },
  } as FineTuneJob;
}
