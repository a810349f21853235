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
    elector = new LeaderElector({ client: kube.asClient(), namespace: "kubetune-system", name: "kubetune-operator", identity: "replica-b", leaseDurationSeconds: 1, renewDeadlineSeconds: 0.8, retryPeriodSeconds: 0.05 });
    let started = 0;
    elector.start({ onStartedLeading: () => (started += 1), onStoppedLeading: () => {} });
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(elector.isLeader()).toBe(false);
    // The holder stops renewing: a whole lease duration after the last change, replica-b takes over.
    await new Promise((resolve) => setTimeout(resolve, 1200));
    expect(elector.isLeader()).toBe(true);
    expect(started).toBe(1);
  });

  it("gives up leadership by the renew deadline when a renew request hangs, though the request never returns", async () => {
    const kube = new FakeKube();
    let hang = false;
    const hung: Promise<never>[] = [];
    // The API server stops answering: every request from then on hangs (no timeout honoured).
    const client = new Proxy(kube.asClient(), {
      get: (target, property, receiver) => {
        const value = Reflect.get(target, property, receiver) as unknown;
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          if (!hang) return (value as (...a: unknown[]) => unknown).apply(target, args);
          const never = new Promise<never>(() => {});
          hung.push(never);
          return never;
        };
      },
    });
    elector = new LeaderElector({ client, namespace: "kubetune-system", name: "op", identity: "a", leaseDurationSeconds: 3, renewDeadlineSeconds: 1, retryPeriodSeconds: 0.1 });
    const lost: { reason: string; at: number }[] = [];
    let renewedAt = 0;
    elector.start({ onStartedLeading: () => {}, onStoppedLeading: (reason) => lost.push({ reason, at: Date.now() }) });
    await waitFor(() => elector!.isLeader());
    // Let a few renews succeed, then hang the next ones.
    await new Promise((resolve) => setTimeout(resolve, 300));
    renewedAt = Date.now();
    hang = true;
    await waitFor(() => lost.length > 0, 5000);
    expect(elector.isLeader()).toBe(false);
    expect(lost[0]!.reason).toBe("the lease was not renewed within the renew deadline (1s)");
    // Within the renew deadline (1 s) of the last renew that could have succeeded, plus scheduling slack on a busy machine:
    // before the lease (3 s) can expire for the other replicas, which is what the deadline is for.
    expect(lost[0]!.at - renewedAt).toBeLessThan(3000);
    expect(hung.length).toBeGreaterThan(0);
  });

  it("stops leading at once when it finds the lease held by another replica, and does not compete again", async () => {
    const kube = new FakeKube();
    elector = new LeaderElector({ client: kube.asClient(), namespace: "kubetune-system", name: "op", identity: "a", leaseDurationSeconds: 30, renewDeadlineSeconds: 20, retryPeriodSeconds: 0.1 });
    const lost: string[] = [];
    let started = 0;
    elector.start({ onStartedLeading: () => (started += 1), onStoppedLeading: (reason) => lost.push(reason) });
    await waitFor(() => elector!.isLeader());
    // Another replica (or an administrator) writes itself into the lease.
    await kube.update(`${leases}/op`, (lease) => {
      (lease as unknown as { spec: Record<string, unknown> }).spec = { holderIdentity: "b", leaseDurationSeconds: 30, renewTime: new Date().toISOString() };
    });
    await waitFor(() => lost.length > 0, 5000);
    expect(lost).toEqual(["the lease kubetune-system/op is held by b now"]);
    expect(elector.isLeader()).toBe(false);
    // Even once the lease is free again, a replica that lost leadership stays out: its process is to restart.
    await kube.update(`${leases}/op`, (lease) => {
      (lease as unknown as { spec: Record<string, unknown> }).spec = { holderIdentity: null, leaseDurationSeconds: 1 };
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(elector.isLeader()).toBe(false);
    expect(started).toBe(1);
  });

  it("refuses a renew deadline that is not shorter than the lease or not longer than the retry period", () => {
    const base = { client: new FakeKube().asClient(), namespace: "ns", name: "op", identity: "a" };
    expect(() => new LeaderElector({ ...base, leaseDurationSeconds: 10, renewDeadlineSeconds: 10 })).toThrow("renewDeadlineSeconds (10) must be less than leaseDurationSeconds (10)");
    expect(() => new LeaderElector({ ...base, renewDeadlineSeconds: 2, retryPeriodSeconds: 2 })).toThrow("renewDeadlineSeconds (2) must be more than 1.2 x retryPeriodSeconds (2)");
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
