import { resourcePath } from "../../kube/client.ts";
import { eventually, kubeClient } from "./harness.ts";

interface Lease {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; resourceVersion: string };
  spec: { holderIdentity?: string | null; leaseDurationSeconds?: number; renewTime?: string | null; acquireTime?: string | null; leaseTransitions?: number };
}

export const leasePath = (namespace: string, name: string) => resourcePath({ group: "coordination.k8s.io", version: "v1", plural: "leases", namespace, name });

export async function leaseHolder(path: string): Promise<string | null | undefined> {
  return (await kubeClient().get<Lease>(path)).spec.holderIdentity;
}

/**
 * Writes another holder into a lease, as a replica that judged it expired would; retried
 * while the current holder's renews make the write conflict. Lease times are MicroTime.
 */
export async function takeLease(path: string, holder: string, leaseDurationSeconds?: number): Promise<void> {
  const client = kubeClient();
  await eventually(`${holder} to take the lease`, async () => {
    const lease = await client.get<Lease>(path);
    const now = new Date().toISOString().replace(/Z$/, "000Z");
    await client.replace(path, {
      ...lease,
      spec: { ...lease.spec, holderIdentity: holder, acquireTime: now, renewTime: now, leaseDurationSeconds: leaseDurationSeconds ?? lease.spec.leaseDurationSeconds, leaseTransitions: (lease.spec.leaseTransitions ?? 0) + 1 },
    });
    return true;
  });
}
