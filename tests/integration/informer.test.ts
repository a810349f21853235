import { mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { KubeClient, resourcePath, type KubeObject } from "../../kube/client.ts";
import { Informer } from "../../kube/informer.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { startControlPlane } from "../../localcluster/controlplane.ts";
import { createNamespace, eventually, kubeClient } from "./harness.ts";

function recorder() {
  const seen: string[] = [];
  return {
    seen,
    handlers: {
      add: (object: KubeObject) => seen.push(`add ${object.metadata?.name}`),
      update: (object: KubeObject) => seen.push(`update ${object.metadata?.name}`),
      delete: (object: KubeObject) => seen.push(`delete ${object.metadata?.name}`),
    },
  };
}

const configMap = (name: string, value = "1") => ({ apiVersion: "v1", kind: "ConfigMap", metadata: { name }, data: { value } });

describe("the informer", () => {
  it("keeps delivering events across watches that the server ends", async () => {
    const client = kubeClient();
    const namespace = await createNamespace("informer");
    const collection = resourcePath({ group: "", version: "v1", plural: "configmaps", namespace });
    await client.create(collection, configMap("before"));
    const { seen, handlers } = recorder();
    const informer = new Informer(client, { path: collection, watchTimeoutSeconds: 1 }).on(handlers);
    await informer.start();
    expect(seen).toContain("add before");
    // Several server-side watch timeouts pass.
    await new Promise((resolve) => setTimeout(resolve, 3500));
    await client.create(collection, configMap("after"));
    await client.patch(`${collection}/after`, { data: { value: "2" } });
    await client.delete(`${collection}/before`);
    await eventually("the events", async () => (seen.includes("add after") && seen.includes("update after") && seen.includes("delete before") ? true : undefined));
    expect(informer.isWatching()).toBe(true);
    // kube-root-ca.crt is the CA bundle the control plane publishes into every namespace.
    expect(informer.list().map((object) => object.metadata?.name).filter((name) => name !== "kube-root-ca.crt")).toEqual(["after"]);
    await informer.stop();
  });

  it("recovers when the API server is restarted under it", async () => {
    const binaries = await resolveBinaries(["kube-apiserver", "etcd"]);
    const controlPlane = await startControlPlane({ dir: await mkdtemp(path.join(os.tmpdir(), "kubetune-restart-")), kubeApiserver: binaries["kube-apiserver"], etcd: binaries.etcd });
    try {
      const client = KubeClient.load(controlPlane.kubeconfig);
      const collection = resourcePath({ group: "", version: "v1", plural: "configmaps", namespace: "default" });
      const { seen, handlers } = recorder();
      const informer = new Informer(client, { path: collection }).on(handlers);
      await informer.start();
      await controlPlane.restartApiserver();
      await client.create(collection, configMap("after-restart"));
      await eventually("the event after the restart", async () => (seen.includes("add after-restart") ? true : undefined), 60_000);
      await eventually("the watch to be open again", async () => (informer.isWatching() ? true : undefined));
      await informer.stop();
    } finally {
      await controlPlane.stop();
    }
  });
});
