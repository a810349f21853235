import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import net, { type AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { KubeClient, resourcePath, type KubeObject } from "../../kube/client.ts";
import { Informer } from "../../kube/informer.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { startControlPlane } from "../../localcluster/controlplane.ts";
import { cluster, createNamespace, eventually, kubeClient } from "./harness.ts";

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

  it("re-opens a watch whose connection went dead without closing, and is not ready meanwhile", async () => {
    // A TCP relay to the API server whose open connections can be frozen: bytes stop flowing both ways while the sockets
    // stay open, as behind a proxy or NAT that lost its state. Connections opened later relay normally.
    const relayed = new Set<{ client: net.Socket; server: net.Socket }>();
    const upstream = new URL(cluster().server);
    const relay = net.createServer((client) => {
      const server = net.connect(Number(upstream.port), upstream.hostname);
      const pair = { client, server };
      relayed.add(pair);
      client.pipe(server);
      server.pipe(client);
      const close = () => {
        client.destroy();
        server.destroy();
        relayed.delete(pair);
      };
      client.on("error", close).on("close", close);
      server.on("error", close).on("close", close);
    });
    await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-relay-"));
    const kubeconfig = path.join(dir, "kubeconfig");
    await writeFile(kubeconfig, (await readFile(cluster().kubeconfig, "utf8")).replace(cluster().server, `https://127.0.0.1:${(relay.address() as AddressInfo).port}`));
    const direct = kubeClient();
    const namespace = await createNamespace("informer-dead");
    const collection = resourcePath({ group: "", version: "v1", plural: "configmaps", namespace });
    const { seen, handlers } = recorder();
    // A short request timeout: a re-opened watch that drew a frozen pooled connection fails fast and is tried again.
    const viaRelay = KubeClient.load(kubeconfig, { requestTimeoutMs: 3000 });
    const informer = new Informer(viaRelay, { path: collection, watchTimeoutSeconds: 60, watchIdleTimeoutSeconds: 3 }).on(handlers);
    try {
      await informer.start();
      await direct.create(collection, configMap("before"));
      await eventually("the event through the relay", async () => (seen.includes("add before") ? true : undefined));
      for (const { client, server } of relayed) {
        client.unpipe(server);
        server.unpipe(client);
        client.pause();
        server.pause();
      }
      await direct.create(collection, configMap("during"));
      await eventually("the informer to notice the dead watch", async () => (informer.isWatching() ? undefined : true), 20_000);
      expect(seen).not.toContain("add during");
      await eventually("the event made while the watch was dead", async () => (seen.includes("add during") ? true : undefined), 20_000);
      await eventually("the informer to be ready again", async () => (informer.isWatching() ? true : undefined));
    } finally {
      await informer.stop();
      viaRelay.close();
      for (const { client, server } of relayed) {
        client.destroy();
        server.destroy();
      }
      relay.close();
    }
  });
});
