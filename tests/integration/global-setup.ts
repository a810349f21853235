import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { TestProject } from "vitest/node";
import { createBucket, startLocalCluster } from "../../localcluster/cluster.ts";
import type { ClusterInfo } from "./harness.ts";

/**
 * Starts one real kube-apiserver + etcd and one MinIO for the whole integration run, building
 * them first if the cache lacks them, and hands their coordinates to the tests.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-it-"));
  const cluster = await startLocalCluster({ dir, log: (line) => console.log(`[local cluster] ${line}`) });
  const bucket = `kubetune-it-${Date.now().toString(36)}`;
  await createBucket(cluster.s3, bucket);
  console.log(
    `[local cluster] kube-apiserver ${cluster.versions.kubeApiserver} at ${cluster.controlPlane.server}; ` +
      `etcd ${cluster.versions.etcd}; MinIO ${cluster.versions.minio} at ${cluster.s3.endpoint}; bucket ${bucket}`,
  );
  const info: ClusterInfo = {
    dir,
    server: cluster.controlPlane.server,
    kubeconfig: cluster.controlPlane.kubeconfig,
    kubectl: cluster.kubectl,
    kubeApiserverVersion: cluster.versions.kubeApiserver,
    s3: {
      endpoint: cluster.s3.endpoint,
      region: cluster.s3.region,
      accessKeyId: cluster.s3.accessKeyId,
      secretAccessKey: cluster.s3.secretAccessKey,
      bucket,
    },
  };
  project.provide("cluster", info);
  return async () => {
    await cluster.stop();
    if (!process.env.KUBETUNE_KEEP_TEST_DIR) await rm(dir, { recursive: true, force: true });
  };
}
