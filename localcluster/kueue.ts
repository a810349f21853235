import { execFile } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { parse, parseAllDocuments, stringify } from "yaml";
import { isAlreadyExists, isNotFound, resourcePath, type KubeClient, type KubeObject } from "../kube/client.ts";
import { kueueConfigDir, resolveBinaries } from "./binaries.ts";
import { assertPortFree, freePort, isPortOpen, startProcess, waitFor, type ManagedProcess } from "./process.ts";

const run = promisify(execFile);

/**
 * A real Kueue manager (sigs.k8s.io/kueue, cmd/kueue) beside the loopback API server.
 *
 * Kueue's own install runs it in a pod behind a Service, with cert-manager or its internal cert
 * rotator, and the API server reaches its webhooks through that Service. Here there is no
 * kubelet, no Service routing and no cluster DNS, so:
 * - its webhooks (admission and CRD conversion) are served on 127.0.0.1 and registered by URL,
 *   so Workloads, ClusterQueues and ResourceFlavors are defaulted and validated exactly as in a
 *   real cluster;
 * - its internal cert management stays on (with it off, the manager insists on metrics
 *   certificates under /etc/kueue), but finds a valid certificate already in its Secret: one we
 *   make, whose names cover both the Service it expects and 127.0.0.1. The rotator then keeps it
 *   and only injects its CA; we write the same files to the cert folder, as the kubelet would
 *   mount the Secret;
 * - leader election is off and every port is on loopback.
 */
export interface KueueManager {
  /** The manager's version, e.g. v0.17.0 (from its startup log). */
  version: string;
  /** The namespace it runs "in": its certificate Secret lives there. */
  namespace: string;
  ports: { webhook: number; health: number; metrics: number };
  process: ManagedProcess;
  /** Stops the manager and unregisters its admission webhooks (its CRDs stay). */
  stop(): Promise<void>;
}

export interface KueueOptions {
  /** Folder for the configuration, certificates and log (logs/kueue.log). */
  dir: string;
  /** The manager binary. */
  kueue: string;
  /** config/components of the same module version: crd/ and webhook/ (binaries.ts kueueConfigDir). */
  configDir: string;
  /** An admin kubeconfig for the API server. */
  kubeconfig: string;
  client: KubeClient;
  log?: (line: string) => void;
}

/** Names Kueue derives from its configuration defaults (apis/config/v1beta2/defaults.go). */
const NAMESPACE = "kueue-system";
const WEBHOOK_SERVICE = "kueue-webhook-service";
const WEBHOOK_SECRET = "kueue-webhook-server-cert";
/** The kustomize name prefix of Kueue's install; the cert rotator looks the configurations up by these names. */
const NAME_PREFIX = "kueue-";
const FIELD_MANAGER = "kubetune-kueue-testbed";
const KUEUE_GROUP = "kueue.x-k8s.io";

/**
 * Starts Kueue with the cached manager and manifests (building them first when missing:
 * minutes, once): what a test file calls in its beforeAll when it needs Kueue.
 */
export async function startLocalKueue(options: Omit<KueueOptions, "kueue" | "configDir">): Promise<KueueManager> {
  const binaries = await resolveBinaries(["kueue"], options.log);
  return startKueue({ ...options, kueue: binaries.kueue, configDir: kueueConfigDir() });
}

/**
 * Installs Kueue's CRDs and webhooks into the API server and starts the manager against it.
 * One at a time per API server: the namespace, Secret and webhook configurations have fixed
 * names; a later start (another test file) takes them over.
 */
export async function startKueue(options: KueueOptions): Promise<KueueManager> {
  const log = options.log ?? (() => {});
  const { client } = options;
  await mkdir(path.join(options.dir, "logs"), { recursive: true });
  const certDir = path.join(options.dir, "certs");
  const ports = { webhook: await freePort(), health: await freePort(), metrics: await freePort() };
  for (const [what, port] of Object.entries(ports)) await assertPortFree(port, `Kueue ${what}`);

  const pki = await makeWebhookPki(path.join(options.dir, "pki"), `${WEBHOOK_SERVICE}.${NAMESPACE}.svc`);
  await mkdir(certDir, { recursive: true });
  await writeFile(path.join(certDir, "tls.crt"), pki.cert);
  await writeFile(path.join(certDir, "tls.key"), pki.key, { mode: 0o600 });
  const caBundle = Buffer.from(pki.caCert).toString("base64");
  const webhookUrl = (urlPath: string) => `https://127.0.0.1:${ports.webhook}${urlPath}`;

  await ensureNamespace(client, NAMESPACE);
  await apply(client, resourcePath({ group: "", version: "v1", plural: "secrets", namespace: NAMESPACE, name: WEBHOOK_SECRET }), {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: WEBHOOK_SECRET, namespace: NAMESPACE },
    // The keys the cert rotator reads (open-policy-agent/cert-controller): it keeps a CA and a
    // server certificate that are valid for the next 90 days and name the Service.
    data: {
      "ca.crt": Buffer.from(pki.caCert).toString("base64"),
      "ca.key": Buffer.from(pki.caKey).toString("base64"),
      "tls.crt": Buffer.from(pki.cert).toString("base64"),
      "tls.key": Buffer.from(pki.key).toString("base64"),
    },
  });

  const crds = await kueueCrds(options.configDir, { url: webhookUrl("/convert"), caBundle });
  for (const crd of crds) await apply(client, `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd.metadata!.name}`, crd);
  for (const crd of crds) await waitEstablished(client, crd.metadata!.name!);
  log(`installed ${crds.length} Kueue CRDs`);

  const webhooks = await kueueWebhookConfigurations(options.configDir, webhookUrl, caBundle);
  const configFile = path.join(options.dir, "kueue-config.yaml");
  await writeFile(configFile, stringify(managerConfiguration(ports, certDir)));
  const manager = startProcess("kueue", options.kueue, [`--config=${configFile}`, "--zap-log-level=2"], {
    logFile: path.join(options.dir, "logs", "kueue.log"),
    env: { ...process.env, KUBECONFIG: options.kubeconfig },
  });

  const unregister = async () => {
    for (const configuration of webhooks) {
      await client.delete(webhookConfigurationPath(configuration)).catch((error: unknown) => {
        if (!isNotFound(error)) throw error;
      });
    }
  };
  const stop = async () => {
    await manager.stop(10_000);
    // With failurePolicy Fail, a webhook left registered without its server would refuse every
    // later write of a Kueue object (the CRDs stay, with what they store).
    await unregister();
    for (const [what, port] of Object.entries(ports)) {
      if (await isPortOpen(port)) throw new Error(`Kueue stopped, but its ${what} port 127.0.0.1:${port} still accepts connections`);
    }
  };
  try {
    // Registered once the manager runs: the API server calls them for every Kueue object.
    for (const configuration of webhooks) await apply(client, webhookConfigurationPath(configuration), configuration);
    // /readyz turns 200 once the certificates are in place and the webhook server listens.
    await waitFor("Kueue", async () => (await fetch(`http://127.0.0.1:${ports.health}/readyz`)).ok, { timeoutMs: 120_000, process: manager });
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
  const version = /"gitVersion":\s*"([^"]+)"/.exec(await readFile(manager.logFile, "utf8"))?.[1] ?? "unknown";
  log(`Kueue ${version} ready (webhooks on 127.0.0.1:${ports.webhook})`);
  return { version, namespace: NAMESPACE, ports, process: manager, stop };
}

/** Kueue's Configuration (apis/config/v1beta2): everything on loopback, one replica, no optional servers. */
function managerConfiguration(ports: { webhook: number; health: number; metrics: number }, certDir: string): object {
  return {
    apiVersion: "config.kueue.x-k8s.io/v1beta2",
    kind: "Configuration",
    namespace: NAMESPACE,
    health: { healthProbeBindAddress: `127.0.0.1:${ports.health}` },
    metrics: { bindAddress: `127.0.0.1:${ports.metrics}` },
    webhook: { host: "127.0.0.1", port: ports.webhook, certDir },
    leaderElection: { leaderElect: false },
    internalCertManagement: { enable: true, webhookServiceName: WEBHOOK_SERVICE, webhookSecretName: WEBHOOK_SECRET },
    // Kueue's own job integrations are not used: kubetune creates its Workloads itself, as an
    // external integration does. batch/job is Kueue's default and only watches Jobs that name a
    // queue; the pod integration (which would intercept every pod) stays off.
    integrations: { frameworks: ["batch/job"] },
    // The visibility API is an aggregated API server of its own, which needs more than a
    // loopback control plane offers; kubetune does not use it.
    featureGates: { VisibilityOnDemand: false },
  };
}

/**
 * Kueue's CRDs as its kustomization builds them: the resources it lists, with a conversion
 * webhook on the CRDs whose patches it applies, reached here by URL on loopback.
 */
export async function kueueCrds(configDir: string, conversion: { url: string; caBundle: string }): Promise<KubeObject[]> {
  const crdDir = path.join(configDir, "crd");
  const kustomization = parse(await readFile(path.join(crdDir, "kustomization.yaml"), "utf8")) as { resources?: string[]; patches?: { path: string }[] };
  if (!kustomization.resources?.length) throw new Error(`${crdDir}/kustomization.yaml lists no resources`);
  const crds = new Map<string, KubeObject & { spec: Record<string, unknown> }>();
  for (const file of kustomization.resources) {
    const crd = parse(await readFile(path.join(crdDir, file), "utf8")) as KubeObject & { spec: Record<string, unknown> };
    crds.set(crd.metadata!.name!, crd);
  }
  for (const { path: file } of kustomization.patches ?? []) {
    const patch = parse(await readFile(path.join(crdDir, file), "utf8")) as KubeObject & { spec?: { conversion?: { strategy: string; webhook?: { conversionReviewVersions?: string[] } } } };
    const crd = crds.get(patch.metadata?.name ?? "");
    const webhook = patch.spec?.conversion?.webhook;
    if (!crd || patch.spec?.conversion?.strategy !== "Webhook" || !webhook) continue;
    crd.spec.conversion = {
      strategy: "Webhook",
      webhook: { conversionReviewVersions: webhook.conversionReviewVersions ?? ["v1"], clientConfig: { url: conversion.url, caBundle: conversion.caBundle } },
    };
  }
  return [...crds.values()];
}

/**
 * Kueue's admission webhook configurations, keeping only the webhooks for Kueue's own kinds
 * (Workload, ClusterQueue, ResourceFlavor, ...). The others belong to job integrations that are
 * off here, and a pod or Job webhook would stand between every other test and the API server.
 */
export async function kueueWebhookConfigurations(configDir: string, url: (urlPath: string) => string, caBundle: string): Promise<KubeObject[]> {
  const file = path.join(configDir, "webhook", "manifests.yaml");
  const documents = parseAllDocuments(await readFile(file, "utf8")).map((document) => document.toJS() as (KubeObject & { webhooks?: Webhook[] }) | null);
  const configurations: KubeObject[] = [];
  for (const document of documents) {
    if (!document?.webhooks) continue;
    const webhooks = document.webhooks
      .filter((webhook) => webhook.rules?.length && webhook.rules.every((rule) => rule.apiGroups.every((group) => group === KUEUE_GROUP)))
      .map((webhook) => {
        const servicePath = webhook.clientConfig.service?.path;
        if (!servicePath) throw new Error(`${file}: webhook ${webhook.name} has no clientConfig.service.path`);
        return { ...webhook, clientConfig: { url: url(servicePath), caBundle } };
      });
    if (webhooks.length === 0) throw new Error(`${file}: ${document.kind} has no webhook for ${KUEUE_GROUP}`);
    configurations.push({ ...document, metadata: { name: `${NAME_PREFIX}${document.metadata!.name}` }, webhooks } as KubeObject);
  }
  if (configurations.length === 0) throw new Error(`${file}: no webhook configurations`);
  return configurations;
}

function webhookConfigurationPath(configuration: KubeObject): string {
  const plural = configuration.kind === "MutatingWebhookConfiguration" ? "mutatingwebhookconfigurations" : "validatingwebhookconfigurations";
  return `/apis/admissionregistration.k8s.io/v1/${plural}/${configuration.metadata!.name}`;
}

interface Webhook {
  name: string;
  clientConfig: { service?: { path?: string } };
  rules?: { apiGroups: string[] }[];
}

/** Server-side apply: creates or updates, so a second start (a later test file) reuses what the first installed. */
async function apply(client: KubeClient, objectPath: string, object: object): Promise<void> {
  await client.patch(objectPath, object, "apply", { fieldManager: FIELD_MANAGER, force: true });
}

async function ensureNamespace(client: KubeClient, name: string): Promise<void> {
  try {
    await client.create(resourcePath({ group: "", version: "v1", plural: "namespaces" }), { apiVersion: "v1", kind: "Namespace", metadata: { name } });
  } catch (error) {
    if (!isAlreadyExists(error)) throw error;
  }
}

async function waitEstablished(client: KubeClient, name: string): Promise<void> {
  await waitFor(
    `CustomResourceDefinition ${name}`,
    async () => {
      const crd = await client.get<{ status?: { conditions?: { type: string; status: string }[] } }>(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`);
      return crd.status?.conditions?.some((condition) => condition.type === "Established" && condition.status === "True") ?? false;
    },
    { timeoutMs: 60_000 },
  );
}

async function openssl(args: string[], dir: string): Promise<void> {
  try {
    await run("openssl", args, { cwd: dir });
  } catch (error) {
    const err = error as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === "ENOENT") throw new Error("openssl is not on PATH; install it (Debian: apt-get install openssl)");
    throw new Error(`openssl ${args[0]} failed: ${err.stderr ?? err.message}`);
  }
}

/**
 * A CA and a webhook serving certificate that the cert rotator accepts as they are:
 * - the CA names itself "kueue-ca" (the rotator verifies the CA for that name) and its key is
 *   PKCS#1 (the rotator parses it with ParsePKCS1PrivateKey);
 * - the server certificate names the Service (which the rotator checks) and 127.0.0.1 (which
 *   the API server checks when it calls the webhooks by URL);
 * - both outlive the rotator's 90-day look-ahead, so it never replaces them during a run.
 */
async function makeWebhookPki(dir: string, serviceDnsName: string): Promise<{ caCert: string; caKey: string; cert: string; key: string }> {
  await mkdir(dir, { recursive: true });
  await openssl(["genrsa", "-traditional", "-out", "ca.key", "2048"], dir);
  await openssl(["req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/O=kueue/CN=kueue-ca", "-extensions", "v3_ca", "-addext", "subjectAltName=DNS:kueue-ca"], dir);
  await writeFile(path.join(dir, "server.ext"), `subjectAltName=DNS:${serviceDnsName},IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n`);
  await openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", `/CN=${serviceDnsName}`], dir);
  await openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "365", "-extfile", "server.ext"], dir);
  const read = (name: string) => readFile(path.join(dir, name), "utf8");
  return { caCert: await read("ca.crt"), caKey: await read("ca.key"), cert: await read("server.crt"), key: await read("server.key") };
}
