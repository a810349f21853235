import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { isAlreadyExists, resourcePath, type KubeClient } from "../../kube/client.ts";
import { checkCa, generateCa, generateServingCert, type KeyPair } from "./certs.ts";

/**
 * Where the progress endpoint's keys come from, without the operator ever reading a Secret and
 * without anything generated at `helm template` time (which Argo CD and `helm template | kubectl
 * apply` rerun at every sync):
 *
 * - The operator keeps a CA in a Secret of its own namespace. Its pod mounts that Secret
 *   (optional: true), so the kubelet reads it, not the operator. When the mount is empty (first
 *   start), the operator generates the CA and creates the Secret: RBAC `create` only, never get,
 *   list or watch. All replicas and restarts then share it, so a leader change does not break
 *   trainers' TLS. (Trainers' progress tokens are service account tokens the kubelet projects
 *   into their pods: no key of the operator's is involved.)
 * - Each process makes its own serving certificate from that CA, in memory, valid for
 *   SERVING_CERT_DAYS and made again a third of that before it expires. Trainers trust the CA
 *   (each trainer pod gets it in KUBETUNE_PROGRESS_CA), so the renewal is invisible to them.
 * - Or the certificate and key come from files (cert-manager's Secret mounted into the pod,
 *   `--progress-tls-cert/--progress-tls-key`), reread when they change.
 */

/** The keys the Secret holds. Secrets made by earlier versions also hold `token.key` (an HMAC key no longer used); it is ignored. */
export const SECRET_KEYS = { caCert: "ca.crt", caKey: "ca.key" } as const;
export const CA_DAYS = 3650;
export const SERVING_CERT_DAYS = 90;

export interface KeySecretOptions {
  client: KubeClient;
  namespace: string;
  name: string;
  /** Where the operator's pod mounts the Secret. */
  dir: string;
  /** How long to wait for the kubelet to show a Secret that another replica created first. */
  mountWaitMs?: number;
  log: (message: string) => void;
}

export interface OperatorKeys {
  ca: KeyPair;
  /** Where they came from: the mounted Secret, or made now (and the Secret created). */
  source: "mounted" | "created";
}

/** The CA from the mounted Secret; made and stored in a new Secret when it is not there yet. */
export async function loadOrCreateKeys(options: KeySecretOptions): Promise<OperatorKeys> {
  const where = `Secret ${options.namespace}/${options.name} mounted at ${options.dir}`;
  const mounted = readMounted(options.dir, where);
  if (mounted) return { ...mounted, source: "mounted" };
  const ca = generateCa("kubetune-progress-ca", CA_DAYS);
  try {
    await options.client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace: options.namespace }), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: {
        name: options.name,
        namespace: options.namespace,
        labels: { "app.kubernetes.io/name": "kubetune", "app.kubernetes.io/component": "operator-keys", "app.kubernetes.io/managed-by": "kubetune-operator" },
        annotations: { "kubetune.io/description": "the progress endpoint's CA; made by the operator, read by its pods' kubelet" },
      },
      type: "Opaque",
      data: {
        [SECRET_KEYS.caCert]: Buffer.from(ca.cert).toString("base64"),
        [SECRET_KEYS.caKey]: Buffer.from(ca.key).toString("base64"),
      },
    });
    options.log(`made a new progress CA and stored it in Secret ${options.namespace}/${options.name}`);
    return { ca, source: "created" };
  } catch (error) {
    if (!isAlreadyExists(error)) throw error;
  }
  // Another replica (or an earlier start) made it since our pod started: the kubelet shows it in the mount soon
  // (within its sync period, about a minute). Reading it ourselves would need the Secret read access we do not hold.
  const waitMs = options.mountWaitMs ?? 180_000;
  options.log(`Secret ${options.namespace}/${options.name} exists but is not mounted yet; waiting up to ${waitMs / 1000}s for the kubelet`);
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const keys = readMounted(options.dir, where);
    if (keys) return { ...keys, source: "mounted" };
  }
  throw new Error(
    `${where}: the Secret exists but its files did not appear within ${waitMs / 1000}s; check that the pod mounts it (the chart does) and restart the pod`,
  );
}

function readMounted(dir: string, where: string): { ca: KeyPair } | undefined {
  const files = Object.values(SECRET_KEYS).map((key) => path.join(dir, key));
  if (!files.every((file) => existsSync(file))) return undefined;
  const ca = { cert: readFileSync(path.join(dir, SECRET_KEYS.caCert), "utf8"), key: readFileSync(path.join(dir, SECRET_KEYS.caKey), "utf8") };
  checkCa(ca, where);
  return { ca };
}

/**
 * The serving certificate the progress endpoint presents, kept current: made from the CA (and
 * remade before it expires), or read from files (and reread when they change).
 */
export class ServingCertificate {
  private current: KeyPair;
  private timer?: NodeJS.Timeout;

  private constructor(
    private readonly source: { ca: KeyPair; hosts: string[] } | { certFile: string; keyFile: string },
    private readonly log: (message: string) => void,
  ) {
    this.current = this.make();
  }

  /** A certificate for these DNS names and IP addresses, signed by the CA. */
  static fromCa(ca: KeyPair, hosts: string[], log: (message: string) => void): ServingCertificate {
    return new ServingCertificate({ ca, hosts }, log);
  }

  /** The certificate and key in these files (cert-manager's, or any other issuer's). */
  static fromFiles(certFile: string, keyFile: string, log: (message: string) => void): ServingCertificate {
    return new ServingCertificate({ certFile, keyFile }, log);
  }

  get(): KeyPair {
    return this.current;
  }

  /** Checks every `checkMs` whether to renew (or reread); calls `onChange` with the new pair. */
  start(onChange: (pair: KeyPair) => void, checkMs = 3600_000): void {
    this.timer = setInterval(() => {
      try {
        if (!this.due()) return;
        const next = this.make();
        if (next.cert === this.current.cert) return;
        this.current = next;
        this.log(`progress endpoint: new serving certificate, valid until ${new X509Certificate(next.cert).validTo}`);
        onChange(next);
      } catch (error) {
        this.log(`progress endpoint: keeping the current certificate: ${(error as Error).message}`);
      }
    }, checkMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private due(): boolean {
    // Files: reread whenever they may have changed (cert-manager renews in place). Made here: in the last third.
    if ("certFile" in this.source) return true;
    const cert = new X509Certificate(this.current.cert);
    const from = Date.parse(cert.validFrom);
    const to = Date.parse(cert.validTo);
    return Date.now() > to - (to - from) / 3;
  }

  private make(): KeyPair {
    if ("certFile" in this.source) return { cert: readFileSync(this.source.certFile, "utf8"), key: readFileSync(this.source.keyFile, "utf8") };
    return generateServingCert(this.source.ca, this.source.hosts, SERVING_CERT_DAYS);
  }
}

/** The host names and addresses a serving certificate must cover: the progress URL's host, and any others given. */
export function servingHosts(progressUrl: string, extra: string[]): string[] {
  let host: string;
  try {
    host = new URL(progressUrl).hostname.replace(/^\[(.*)\]$/, "$1");
  } catch {
    throw new Error(`--progress-url ${progressUrl}: not a URL`);
  }
  return [...new Set([host, ...extra.filter(Boolean)])];
}
