import { spawn } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { CRD_FILE } from "../../api/index.ts";
import { makePki } from "../../localcluster/pki.ts";
import { freePort } from "../../localcluster/process.ts";
import { LeaderElector } from "../../operator/runtime/leader-election.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";
import { leaseHolder, leasePath, takeLease } from "./leases.ts";


describe("leader election on a Lease", () => {
  it("lets exactly one replica lead, and hands over when the leader stops", async () => {
    const namespace = await createNamespace("lease");
    const leading = new Set<string>();
    const electors = ["replica-a", "replica-b"].map(
      (identity) => new LeaderElector({ client: kubeClient(), namespace, name: "kubetune-operator", identity, leaseDurationSeconds: 4, renewDeadlineSeconds: 3, retryPeriodSeconds: 0.5 }),
    );
    electors.forEach((elector, index) =>
      elector.start({
        onStartedLeading: () => leading.add(["replica-a", "replica-b"][index]!),
        onStoppedLeading: () => leading.delete(["replica-a", "replica-b"][index]!),
      }),
    );
    await eventually("a leader", async () => (leading.size > 0 ? true : undefined));
    // Several renew rounds pass with both replicas competing; never two leaders.
    for (let round = 0; round < 10; round += 1) {
      expect(electors.filter((elector) => elector.isLeader())).toHaveLength(1);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const leader = electors.find((elector) => elector.isLeader())!;
    const follower = electors.find((elector) => !elector.isLeader())!;
    const started = Date.now();
    await leader.stop();
    await eventually("the follower to take over", async () => (follower.isLeader() ? true : undefined), 10_000);
    // Released on stop, so the take-over does not wait for the lease to expire.
    expect(Date.now() - started).toBeLessThan(3000);
    await follower.stop();
  });

  it("takes over an expired lease from a leader that died without releasing it", async () => {
    const namespace = await createNamespace("lease");
    const options = { client: kubeClient(), namespace, name: "op", leaseDurationSeconds: 2, renewDeadlineSeconds: 1.5, retryPeriodSeconds: 0.3 };
    const crashed = new LeaderElector({ ...options, identity: "crashed" });
    crashed.start({ onStartedLeading: () => {}, onStoppedLeading: () => {} });
    await eventually("the first replica to lead", async () => (crashed.isLeader() ? true : undefined));
    // Simulate a crash: stop renewing without releasing.
    (crashed as unknown as { stopped: boolean }).stopped = true;
    const successor = new LeaderElector({ ...options, identity: "successor" });
    successor.start({ onStartedLeading: () => {}, onStoppedLeading: () => {} });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(successor.isLeader()).toBe(false);
    await eventually("the successor to take the expired lease", async () => (successor.isLeader() ? true : undefined), 10_000);
    await successor.stop();
  });

  it("exits the operator process, non-zero and saying why, when another holder takes its lease", async () => {
    expect(kubectl(["apply", "--server-side", "--force-conflicts", "-f", CRD_FILE]).status).toBe(0);
    const namespace = await createNamespace("lease-exit");
    const pki = await makePki(path.join(await mkdtemp(path.join(os.tmpdir(), "kubetune-lease-exit-")), "pki"));
    const probePort = await freePort();
    // The operator as deployed: its own process, the CLI's flags, leader election on.
    const child = spawn(
      process.execPath,
      [
        "bin/kubetune.mjs",
        "operator",
        `--kubeconfig=${cluster().kubeconfig}`,
        `--namespaces=${namespace}`,
        `--probe-address=127.0.0.1:${probePort}`,
        `--progress-address=127.0.0.1:${await freePort()}`,
        `--progress-tls-cert=${pki.servingCert}`,
        `--progress-tls-key=${pki.servingKey}`,
        "--leader-elect",
        `--leader-election-namespace=${namespace}`,
        "--leader-election-id=kubetune-operator",
        "--no-preflight",
      ],
      { env: { ...process.env, HOSTNAME: "operator-pod-a" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    try {
      const lease = leasePath(namespace, "kubetune-operator");
      await eventually("the operator to hold the lease", async () => ((await leaseHolder(lease))?.startsWith("operator-pod-a-") ? true : undefined), 60_000);
      expect((await fetch(`http://127.0.0.1:${probePort}/healthz`)).status).toBe(200);
      await takeLease(lease, "operator-pod-b");
      const code = await Promise.race([exited, new Promise<"still running">((resolve) => setTimeout(() => resolve("still running"), 30_000))]);
      expect(code, output).toBe(1);
      expect(output).toContain(`lost leadership of the lease ${namespace}/kubetune-operator (the lease ${namespace}/kubetune-operator is held by operator-pod-b now)`);
      // It left the lease to its new holder.
      expect(await leaseHolder(lease)).toBe("operator-pod-b");
    } finally {
      child.kill("SIGKILL");
    }
  });
});
