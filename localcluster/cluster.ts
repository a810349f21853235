import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { KubeClient } from "../kube/client.ts";
import { pinnedVersions, resolveBinaries, type BinaryName } from "./binaries.ts";
import { startControlPlane, type ControlPlane } from "./controlplane.ts";
import { startMinio, type S3Server } from "./minio.ts";
import { startProcess, type ManagedProcess } from "./process.ts";
import { DefaultServiceAccounts } from "./service-accounts.ts";

/** A loopback Kubernetes control plane and S3 server: what the integration tests and `dev-cluster` run. */
export interface LocalCluster {
  dir: string;
  controlPlane: ControlPlane;
  s3: S3Server;
  /** Kubernetes' garbage collector (build/garbage-collector), unless the options turned it off. */
  garbageCollector?: ManagedProcess;
  /** Path of the kubectl binary built with the API server. */
  kubectl: string;
  client: KubeClient;
  versions: { kubeApiserver: string; etcd: string; minio: string };
  stop(): Promise<void>;
}

export interface LocalClusterOptions {
  dir: string;
  apiserverPort?: number;
  s3Port?: number;
  /**
   * Runs Kubernetes' garbage collector beside the API server (default true), as kube-controller-manager does in a
   * real cluster: objects whose owners are gone (a deleted FineTuneJob's pods, its Kueue Workload) are deleted.
   */
  garbageCollector?: boolean;
  log?: (line: string) => void;
}

export async function startLocalCluster(options: LocalClusterOptions): Promise<LocalCluster> {
  await mkdir(options.dir, { recursive: true });
  const withGarbageCollector = options.garbageCollector ?? true;
  const names: BinaryName[] = ["kube-apiserver", "kubectl", "etcd", "minio", ...(withGarbageCollector ? (["garbage-collector"] as const) : [])];
  const binaries = await resolveBinaries(names, options.log);
  const controlPlane = await startControlPlane({
    dir: options.dir,
    kubeApiserver: binaries["kube-apiserver"],
    etcd: binaries.etcd,
    apiserverPort: options.apiserverPort,
  });
  let s3: S3Server;
  try {
    s3 = await startMinio({ dir: options.dir, minio: binaries.minio, port: options.s3Port });
  } catch (error) {
    await controlPlane.stop();
    throw error;
  }
  // It waits for nothing: it reads discovery again every few seconds, so CRDs installed later are covered too.
  const garbageCollector = withGarbageCollector
    ? startProcess("garbage-collector", binaries["garbage-collector"], [`--kubeconfig=${controlPlane.kubeconfig}`], { logFile: path.join(options.dir, "logs", "garbage-collector.log") })
    : undefined;
  const client = KubeClient.load(controlPlane.kubeconfig);
  const serviceAccounts = new DefaultServiceAccounts(client, options.log);
  await serviceAccounts.start();
  const pinned = pinnedVersions();
  return {
    dir: options.dir,
    controlPlane,
    s3,
    garbageCollector,
    kubectl: binaries.kubectl,
    client,
    versions: {
      kubeApiserver: controlPlane.version,
      etcd: process.env.KUBETUNE_ETCD ? "custom binary" : pinned.etcd,
      minio: process.env.KUBETUNE_MINIO ? s3.version : `github.com/minio/minio@${pinned.minio}`,
    },
    async stop() {
      await garbageCollector?.stop();
      await serviceAccounts.stop();
      await s3.stop();
      await controlPlane.stop();
    },
  };
}

/** A client for the local S3 server with its root credentials. */
export function s3Client(s3: S3Server): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
}

export async function createBucket(s3: S3Server, bucket: string): Promise<void> {
  const client = s3Client(s3);
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } finally {
    client.destroy();
  }
}
