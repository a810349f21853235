import { readFileSync } from "node:fs";
import { ApiError, resourcePath, type KubeClient } from "../kube/client.ts";
import { Informer } from "../kube/informer.ts";

/**
 * Creates the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in every namespace:
 * the jobs of kube-controller-manager's service-account controller and root-CA publisher that
 * pods need. The API server's ServiceAccount admission refuses pods whose account does not
 * exist, and the token volume it adds to pods holds that ConfigMap's ca.crt.
 */
export class DefaultServiceAccounts {
  private readonly namespaces: Informer<{ metadata?: { name?: string; deletionTimestamp?: string } }>;

  constructor(
    private readonly client: KubeClient,
    log?: (message: string) => void,
  ) {
    this.namespaces = new Informer(client, { path: "/api/v1/namespaces", log });
    this.namespaces.on({ add: (namespace) => void this.ensure(namespace.metadata?.name, namespace.metadata?.deletionTimestamp).catch((error: unknown) => log?.(`default service account: ${(error as Error).message}`)) });
  }

  start(): Promise<void> {
    return this.namespaces.start();
  }

  stop(): Promise<void> {
    return this.namespaces.stop();
  }

  private async ensure(namespace: string | undefined, deleting: string | undefined): Promise<void> {
    if (!namespace || deleting) return;
    const cluster = this.client.config.getCurrentCluster();
    const caCert = cluster?.caData ? Buffer.from(cluster.caData, "base64").toString("utf8") : cluster?.caFile ? readFileSync(cluster.caFile, "utf8") : "";
    const objects = [
      { plural: "serviceaccounts", object: { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "default", namespace } } },
      { plural: "configmaps", object: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "kube-root-ca.crt", namespace }, data: { "ca.crt": caCert } } },
    ];
    for (const { plural, object } of objects) {
      try {
        await this.client.create(resourcePath({ group: "", version: "v1", plural, namespace }), object);
      } catch (error) {
        if (!(error instanceof ApiError && (error.status === 409 || error.status === 403))) throw error;
      }
    }
  }
}
