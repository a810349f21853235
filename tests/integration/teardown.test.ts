import { mkdtemp } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { startLocalCluster } from "../../localcluster/cluster.ts";
import { startControlPlane } from "../../localcluster/controlplane.ts";
import { isAlive, isPortOpen } from "../../localcluster/process.ts";

describe("local cluster lifecycle", () => {
  it("leaves no process running and no port bound after stop", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-teardown-"));
    const cluster = await startLocalCluster({ dir });
    const pids = [...cluster.controlPlane.processes.map((process) => process.pid), cluster.s3.process.pid, cluster.garbageCollector!.pid];
    const ports = [Number(new URL(cluster.controlPlane.server).port), Number(new URL(cluster.s3.endpoint).port)];
    expect(pids.every(isAlive)).toBe(true);
    expect(await Promise.all(ports.map(isPortOpen))).toEqual([true, true]);

    await cluster.stop();

    expect(pids.filter(isAlive)).toEqual([]);
    expect(await Promise.all(ports.map(isPortOpen))).toEqual([false, false]);
  });

  it("says which port is taken instead of hanging when a port is in use", async () => {
    const binaries = await resolveBinaries(["kube-apiserver", "etcd"]);
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-port-"));
      await expect(startControlPlane({ dir, kubeApiserver: binaries["kube-apiserver"], etcd: binaries.etcd, apiserverPort: port })).rejects.toThrow(
        `port 127.0.0.1:${port} for kube-apiserver is already in use`,
      );
    } finally {
      blocker.close();
    }
  });
});
