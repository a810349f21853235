import { afterEach, describe, expect, it } from "vitest";
import { resourcePath } from "../../kube/client.ts";
import { FakeKube } from "../../kube/fake.ts";
import { LeaderElector } from "./leader-election.ts";

const leases = resourcePath({ group: "coordination.k8s.io", version: "v1", plural: "leases", namespace: "kubetune-system" });

describe("LeaderElector", () => {
  let elector: LeaderElector | undefined;
  afterEach(async () => {
    await elector?.stop();
    elector = undefined;
  });

  it("measures lease expiry from when it saw the record change, not from the holder's renewTime", async () => {
    const kube = new FakeKube();
    // The holder's clock is an hour behind: its renewTime looks long expired, yet it renews.
    const skewed = new Date(Date.now() - 3600_000).toISOString();
    await kube.create(leases, {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "kubetune-operator" },
      spec: { holderIdentity: "replica-a", leaseDurationSeconds: 1, acquireTime: skewed, renewTime: skewed },
    } as never);
    elector = new LeaderElector({ client: kube.asClient(), namespace: "kubetune-system", name: "kubetune-operator", identity: "replica-b", leaseDurationSeconds: 1, retryPeriodSeconds: 0.05 });
    let started = 0;
    elector.start({ onStartedLeading: () => (started += 1), onStoppedLeading: () => {} });
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(elector.isLeader()).toBe(false);
    // The holder stops renewing: a whole lease duration after the last change, replica-b takes over.
    await new Promise((resolve) => setTimeout(resolve, 1200));
    expect(elector.isLeader()).toBe(true);
    expect(started).toBe(1);
  });
});
