import { describe, expect, it } from "vitest";
import { LeaderElector } from "../../operator/runtime/leader-election.ts";
import { createNamespace, eventually, kubeClient } from "./harness.ts";

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
});
