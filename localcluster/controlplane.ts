import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import path from "node:path";
import { makePki } from "./pki.ts";
import { assertPortFree, freePort, startProcess, waitFor, type ManagedProcess } from "./process.ts";

/** A running loopback kube-apiserver + etcd. */
export interface ControlPlane {
  /** https://127.0.0.1:<port> */
  server: string;
  /** The kube-apiserver's reported gitVersion, e.g. v1.36.3. */
  version: string;
  /** JSON lines, one per request made by a service account (Metadata level): who did what, and the authorizer's decision. */
  auditLog: string;
  /** A kubeconfig for the admin user (group system:masters). */
  kubeconfig: string;
  adminToken: string;
  caCert: string;
  processes: ManagedProcess[];
  stop(): Promise<void>;
  /** Stops kube-apiserver and starts it again on the same port and etcd (clients see it go away and come back). */
  restartApiserver(): Promise<void>;
}

export interface ControlPlaneOptions {
  /** Folder for PKI, etcd data, logs and the kubeconfig. */
  dir: string;
  kubeApiserver: string;
  etcd: string;
  /** Fixed ports; free ones are picked when unset. */
  apiserverPort?: number;
  etcdPort?: number;
}

export async function startControlPlane(options: ControlPlaneOptions): Promise<ControlPlane> {
  const { dir } = options;
  await mkdir(path.join(dir, "logs"), { recursive: true });
  const pki = await makePki(path.join(dir, "pki"));
  const adminToken = randomBytes(24).toString("hex");
  const tokenFile = path.join(dir, "pki", "tokens.csv");
  await writeFile(tokenFile, `${adminToken},kubetune-admin,kubetune-admin,"system:masters"\n`, { mode: 0o600 });
  // Service accounts (the operator as the chart runs it) are audited, so tests can compare what it did with what its
  // RBAC grants; the admin user (tests, the pod runner) is not, which keeps the log small.
  const auditPolicy = path.join(dir, "audit-policy.yaml");
  const auditLog = path.join(dir, "logs", "audit.log");
  await writeFile(
    auditPolicy,
    ["apiVersion: audit.k8s.io/v1", "kind: Policy", "omitStages: [RequestReceived]", "rules:", "  - level: Metadata", "    userGroups: [system:serviceaccounts]", "  - level: None", ""].join("\n"),
  );

  const etcdPort = options.etcdPort ?? (await freePort());
  const etcdPeerPort = await freePort();
  const apiserverPort = options.apiserverPort ?? (await freePort());
  await assertPortFree(etcdPort, "etcd");
  await assertPortFree(apiserverPort, "kube-apiserver");

  const etcdUrl = `http://127.0.0.1:${etcdPort}`;
  const peerUrl = `http://127.0.0.1:${etcdPeerPort}`;
  const etcd = startProcess(
    "etcd",
    options.etcd,
    [
      "--name=kubetune",
      `--data-dir=${path.join(dir, "etcd")}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=kubetune=${peerUrl}`,
      "--log-level=warn",
      // Throwaway data: skipping fsync makes every API write several times faster.
      "--unsafe-no-fsync",
    ],
    { logFile: path.join(dir, "logs", "etcd.log") },
  );
  const processes: ManagedProcess[] = [etcd];
  const stop = async () => {
    for (const process of [...processes].reverse()) await process.stop();
  };
  try {
    await waitFor("etcd", async () => (await fetch(`${etcdUrl}/health`)).ok, { timeoutMs: 30_000, process: etcd });

    const apiserverArgs = [
        `--etcd-servers=${etcdUrl}`,
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        `--secure-port=${apiserverPort}`,
        `--tls-cert-file=${pki.servingCert}`,
        `--tls-private-key-file=${pki.servingKey}`,
        `--client-ca-file=${pki.caCert}`,
        // Logs come from the pod runner's kubelet endpoint on the node's loopback InternalIP.
        `--kubelet-certificate-authority=${pki.caCert}`,
        `--kubelet-client-certificate=${pki.kubeletClientCert}`,
        `--kubelet-client-key=${pki.kubeletClientKey}`,
        "--kubelet-preferred-address-types=InternalIP",
        `--token-auth-file=${tokenFile}`,
        "--authorization-mode=RBAC",
        // As many production clusters (OpenShift among them): setting blockOwnerDeletion needs update on the owner's
        // finalizers subresource, so the chart's RBAC is tested against it.
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        `--audit-policy-file=${auditPolicy}`,
        `--audit-log-path=${auditLog}`,
        `--service-account-key-file=${pki.serviceAccountPublicKey}`,
        `--service-account-signing-key-file=${pki.serviceAccountKey}`,
        "--service-account-issuer=https://kubernetes.default.svc",
        "--api-audiences=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.96.0.0/24",
        "--allow-privileged=false",
        "--profiling=false",
        "--v=1",
    ];
    const caCert = await readFile(pki.caCert);
    const get = (urlPath: string) => httpsGet(`https://127.0.0.1:${apiserverPort}${urlPath}`, adminToken, caCert);
    const startApiserver = async () => {
      const apiserver = startProcess("kube-apiserver", options.kubeApiserver, apiserverArgs, { logFile: path.join(dir, "logs", "kube-apiserver.log") });
      processes.push(apiserver);
      await waitFor("kube-apiserver", async () => (await get("/readyz")).status === 200, { timeoutMs: 90_000, process: apiserver });
    };
    await startApiserver();
    const version = (JSON.parse((await get("/version")).body) as { gitVersion: string }).gitVersion;

    const server = `https://127.0.0.1:${apiserverPort}`;
    const kubeconfig = path.join(dir, "kubeconfig");
    await writeFile(kubeconfig, kubeconfigYaml(server, caCert, adminToken), { mode: 0o600 });
    const restartApiserver = async () => {
      const old = processes.findLast((process) => process.name === "kube-apiserver");
      await old?.stop();
      processes.splice(processes.indexOf(old!), 1);
      await startApiserver();
    };
    return { server, version, auditLog, kubeconfig, adminToken, caCert: pki.caCert, processes, stop, restartApiserver };
  } catch (error) {
    await stop();
    throw error;
  }
}

export function kubeconfigYaml(server: string, caCert: Buffer, token: string, user = "kubetune-admin"): string {
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: kubetune-local",
    "  cluster:",
    `    server: ${server}`,
    `    certificate-authority-data: ${caCert.toString("base64")}`,
    "users:",
    `- name: ${user}`,
    "  user:",
    `    token: ${token}`,
    "contexts:",
    "- name: kubetune-local",
    "  context:",
    "    cluster: kubetune-local",
    `    user: ${user}`,
    "current-context: kubetune-local",
    "",
  ].join("\n");
}

function httpsGet(url: string, token: string, ca: Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.get(url, { ca, headers: { authorization: `Bearer ${token}` }, timeout: 5000 }, (response) => {
      let body = "";
      response.on("data", (chunk: Buffer) => (body += chunk.toString()));
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.once("timeout", () => request.destroy(new Error("timeout")));
    request.once("error", reject);
  });
}
