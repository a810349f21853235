import type { Command } from "commander";
import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { CRD_FILE, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../api/index.ts";
import { ApiError, KubeClient, resourcePath } from "../kube/client.ts";
import { Kubeconfig } from "../kube/config-loader.ts";

/**
 * How the CLI's cluster commands reach the cluster, and the errors a user meets there (no
 * cluster, the API not installed, a job in another namespace), each saying what to do.
 */

export interface ClusterFlags {
  kubeconfig?: string;
  context?: string;
  namespace?: string;
}

export interface Cluster {
  client: KubeClient;
  /** The namespace the command works in: --namespace, else the context's, else default. */
  namespace: string;
  /** True when the user named the namespace. */
  namespaceGiven: boolean;
  server: string;
}

/** An error whose message is the whole story for the user: printed as it is, exit code 1. */
export class UserError extends Error {}

const START_A_CLUSTER = 'start the local one with eval "$(npx kubetune dev-cluster up)", or point KUBECONFIG (or --kubeconfig) at your cluster\'s kubeconfig';
const INSTALL_KUBETUNE = `install kubetune: helm install kubetune helm/kubetune -n kubetune-system --create-namespace (or only the CRD: kubectl apply --server-side -f ${CRD_FILE})`;

/** --kubeconfig, --context and -n/--namespace, on a command that talks to the cluster. */
export function withClusterFlags(command: Command): Command {
  return command
    .option("-n, --namespace <namespace>", "namespace of the job; the kubeconfig context's, else default")
    .option("--kubeconfig <file>", "kubeconfig to use; $KUBECONFIG or ~/.kube/config when unset")
    .option("--context <name>", "kubeconfig context to use; its current context when unset");
}

export function connect(flags: ClusterFlags, env: NodeJS.ProcessEnv = process.env, home = os.homedir()): Cluster {
  const file = flags.kubeconfig ?? env.KUBECONFIG?.split(path.delimiter).find(Boolean);
  const homeConfig = path.join(home, ".kube", "config");
  if (file !== undefined && !existsSync(file)) {
    throw new UserError(`no cluster: the kubeconfig ${file} (from ${flags.kubeconfig ? "--kubeconfig" : "KUBECONFIG"}) does not exist; ${START_A_CLUSTER}`);
  }
  if (file === undefined && !existsSync(homeConfig) && !env.KUBERNETES_SERVICE_HOST) {
    throw new UserError(`no cluster: KUBECONFIG is not set and ${homeConfig} does not exist; ${START_A_CLUSTER}`);
  }
  // kubetune's own loader, as the operator's (kube/config-loader.ts): kubectl's lookup order, and @kubernetes/client-node
  // only for a user whose credentials come from an exec plugin or an auth provider.
  let config: Kubeconfig;
  try {
    // The file's current-context is checked only when no --context replaces it.
    config = Kubeconfig.load(flags.kubeconfig, { env, home, context: flags.context });
  } catch (error) {
    const message = (error as Error).message;
    if (flags.context && message.includes(`context "${flags.context}" is not among its contexts`)) {
      throw new UserError(`the kubeconfig has no context "${flags.context}"; it has: ${/\(([^)]*)\)$/.exec(message)?.[1] ?? "none"}`);
    }
    throw new UserError(`cannot read the kubeconfig ${file ?? homeConfig}: ${message}`);
  }
  let client: KubeClient;
  try {
    client = new KubeClient(config);
  } catch (error) {
    throw new UserError(`${(error as Error).message} (${config.source})`);
  }
  return {
    client,
    namespace: flags.namespace ?? config.namespace ?? "default",
    namespaceGiven: flags.namespace !== undefined,
    server: config.getCurrentCluster()?.server ?? "",
  };
}

export function jobsPath(namespace: string | undefined, name?: string, subresource?: string): string {
  return resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name, subresource });
}

/** The job, or an error that says where it is instead, or what is missing. */
export async function getJob(cluster: Cluster, name: string): Promise<FineTuneJob> {
  try {
    return await cluster.client.get<FineTuneJob>(jobsPath(cluster.namespace, name));
  } catch (error) {
    throw await explain(error, cluster, name);
  }
}

/**
 * Turns what went wrong talking to the cluster into what to do about it: an unreachable API
 * server, rejected credentials, a missing CRD, a job that is not in this namespace (and where
 * it is), a namespace that does not exist, a forbidden request.
 */
export async function explain(error: unknown, cluster: Cluster, name?: string): Promise<Error> {
  if (error instanceof UserError) return error;
  if (!(error instanceof ApiError)) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code && ["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ETIMEDOUT", "ECONNRESET", "EAI_AGAIN"].includes(code)) {
      return new UserError(
        `cannot reach the Kubernetes API server at ${cluster.server} (${code}): is the cluster running? A dev cluster that was stopped leaves KUBECONFIG pointing nowhere: check with npx kubetune dev-cluster status, or ${START_A_CLUSTER}`,
      );
    }
    if (code?.startsWith("ERR_TLS") || code === "DEPTH_ZERO_SELF_SIGNED_CERT" || code === "UNABLE_TO_VERIFY_LEAF_SIGNATURE") {
      return new UserError(`the API server at ${cluster.server} presented a certificate the kubeconfig's CA does not verify (${code}): is this the kubeconfig of that cluster?`);
    }
    return error as Error;
  }
  if (error.status === 401) return new UserError(`the API server at ${cluster.server} did not accept the kubeconfig's credentials (401 Unauthorized): log in again or get a fresh kubeconfig`);
  if (error.status === 403) {
    return new UserError(`${serverMessage(error)} (403 Forbidden): ask for the edit or view role in namespace ${cluster.namespace}; the kubetune chart adds FineTuneJobs to both`);
  }
  if (error.status !== 404) return new UserError(serverMessage(error));
  if (!(await apiInstalled(cluster.client))) {
    return new UserError(`the cluster at ${cluster.server} does not serve ${KIND}s (${GROUP}/${VERSION}): ${INSTALL_KUBETUNE}`);
  }
  if (!(await namespaceExists(cluster))) {
    return new UserError(`namespace "${cluster.namespace}" does not exist${cluster.namespaceGiven ? "" : " (the kubeconfig context's namespace)"}; name another with -n NAMESPACE`);
  }
  if (name === undefined) return new UserError(serverMessage(error));
  const elsewhere = await namespacesHolding(cluster.client, name);
  if (elsewhere.length > 0) {
    return new UserError(`finetunejob "${name}" is not in namespace "${cluster.namespace}" but in ${elsewhere.map((namespace) => `"${namespace}"`).join(", ")}: add -n ${elsewhere[0]}`);
  }
  return new UserError(`finetunejob "${name}" not found in namespace "${cluster.namespace}"; kubetune list -n ${cluster.namespace} shows the jobs there (kubetune list -A, every namespace)`);
}

/** Whether the API server knows kubetune.io/v1alpha1 at all (the CRD is installed). */
export async function apiInstalled(client: KubeClient): Promise<boolean> {
  try {
    const list = await client.get<{ resources?: { name: string }[] }>(`/apis/${GROUP}/${VERSION}`);
    return (list.resources ?? []).some((resource) => resource.name === PLURAL);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return false;
    throw error;
  }
}

async function namespaceExists(cluster: Cluster): Promise<boolean> {
  try {
    await cluster.client.get(resourcePath({ group: "", version: "v1", plural: "namespaces", name: cluster.namespace }));
    return true;
  } catch (error) {
    // Without permission to read namespaces, assume it exists and let the job's 404 speak.
    return !(error instanceof ApiError && error.status === 404);
  }
}

/** Namespaces with a job of this name, when the user may list jobs cluster-wide. */
async function namespacesHolding(client: KubeClient, name: string): Promise<string[]> {
  try {
    const list = await client.list<FineTuneJob>(jobsPath(undefined), { fieldSelector: `metadata.name=${name}` });
    return list.items.map((job) => job.metadata.namespace!).sort();
  } catch {
    return [];
  }
}

function serverMessage(error: ApiError): string {
  return error.message.replace(/^[A-Z]+ \S+: \d+ /, "");
}

/**
 * Runs a command's action and prints a failure as one `kubetune: message` line with exit code
 * 1, explaining cluster errors first.
 */
export function action<A extends unknown[]>(body: (...args: A) => Promise<number | void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      const code = await body(...args);
      if (typeof code === "number") process.exitCode = code;
    } catch (error) {
      const message = error instanceof UserError ? error.message : ((error as Error).message ?? String(error));
      console.error(`kubetune: ${message}`);
      process.exitCode = 1;
    }
  };
}
