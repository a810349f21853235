import { existsSync, readFileSync } from "node:fs";
import type https from "node:https";
import os from "node:os";
import path from "node:path";
import { parse, stringify } from "yaml";

/**
 * kubetune's own kubeconfig loader: the in-cluster service account, or a kubeconfig file (or a
 * $KUBECONFIG list) with a token, a token file, a client certificate and key, basic auth and a
 * CA, each as data or as a file. @kubernetes/client-node does the same, but importing it costs
 * the operator about 70 MiB of memory before it has read a single object; it is loaded (lazily)
 * only for credentials that run code: exec plugins and auth providers.
 *
 * Files (token, certificate, key, CA) are read again at every applyToHTTPSOptions, so that
 * rotated service account tokens and certificates are picked up; KubeClient calls it every few
 * seconds at most.
 */

/** Where the kubelet mounts a pod's service account token, CA and namespace. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** The current context's cluster entry, named as @kubernetes/client-node names it. */
export interface ClusterEntry {
  name: string;
  server: string;
  /** The CA certificate, base64 (certificate-authority-data). */
  caData?: string;
  /** The CA certificate's file (certificate-authority), absolute. */
  caFile?: string;
  skipTLSVerify: boolean;
  tlsServerName?: string;
}

/**
 * What KubeClient needs from a kubeconfig. @kubernetes/client-node's KubeConfig has the same
 * two methods, so one can be handed in instead (the tests do).
 */
export interface ClusterConfig {
  getCurrentCluster(): ClusterEntry | null;
  /** Sets ca, cert, key, servername, rejectUnauthorized, auth and the authorization header. */
  applyToHTTPSOptions(options: https.RequestOptions): Promise<void>;
}

/** The fields of a kubeconfig user that kubetune reads itself; exec and auth-provider go to the library. */
interface UserEntry {
  token?: string;
  tokenFile?: string;
  certData?: string;
  certFile?: string;
  keyData?: string;
  keyFile?: string;
  username?: string;
  password?: string;
  /** exec or auth-provider: credentials a plugin makes. */
  plugin?: "exec" | "auth-provider";
}

interface ContextEntry {
  name: string;
  cluster: string;
  user: string;
  namespace?: string;
}

/** The merged kubeconfig document, file paths made absolute: what the library gets for plugins. */
interface RawKubeconfig {
  clusters: { name: string; cluster: Record<string, unknown> }[];
  users: { name: string; user: Record<string, unknown> }[];
  contexts: { name: string; context: Record<string, unknown> }[];
  "current-context"?: string;
}

export interface LoadOptions {
  /** Defaults to process.env (KUBECONFIG, KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT). */
  env?: NodeJS.ProcessEnv;
  /** Where ~/.kube/config is looked for. */
  home?: string;
  /** Where the service account is mounted in a pod. */
  serviceAccountDir?: string;
  /** The context to use instead of the file's current-context (kubectl --context). */
  context?: string;
}

export class Kubeconfig implements ClusterConfig {
  /** The library's KubeConfig for an exec or auth-provider user, made on first use. */
  private delegate?: Promise<ClusterConfig>;

  private constructor(
    /** Where the configuration came from, for error messages: a file, a KUBECONFIG list, or "in-cluster". */
    readonly source: string,
    private readonly clusters: Map<string, ClusterEntry>,
    private readonly users: Map<string, UserEntry>,
    private readonly contextEntries: Map<string, ContextEntry>,
    private current: string | undefined,
    private readonly raw?: RawKubeconfig,
    currentField = "current-context",
  ) {
    if (current !== undefined) this.useContext(current, currentField);
  }

  /**
   * The kubeconfig as kubectl finds it: the given file; else the files $KUBECONFIG lists
   * (merged, the first to set a name or the current context wins); else ~/.kube/config; else
   * the pod's service account.
   */
  static load(file?: string, options: LoadOptions = {}): Kubeconfig {
    const env = options.env ?? process.env;
    if (file) return Kubeconfig.fromFiles([file], options.context);
    const listed = (env.KUBECONFIG ?? "").split(path.delimiter).filter(Boolean);
    if (listed.length > 0) {
      const existing = listed.filter((candidate) => existsSync(candidate));
      if (existing.length === 0) throw new Error(`KUBECONFIG=${env.KUBECONFIG}: none of these files exists`);
      return Kubeconfig.fromFiles(existing, options.context);
    }
    const home = path.join(options.home ?? os.homedir(), ".kube", "config");
    if (existsSync(home)) return Kubeconfig.fromFiles([home], options.context);
    if (env.KUBERNETES_SERVICE_HOST) return Kubeconfig.inCluster({ env, serviceAccountDir: options.serviceAccountDir });
    throw new Error(`no kubeconfig: give --kubeconfig, set KUBECONFIG, create ${home}, or run in a pod with a service account`);
  }

  /** The pod's service account: the API server from KUBERNETES_SERVICE_HOST/PORT, the token and CA from their mounted files. */
  static inCluster(options: LoadOptions = {}): Kubeconfig {
    const env = options.env ?? process.env;
    const dir = options.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
    const host = env.KUBERNETES_SERVICE_HOST;
    const port = env.KUBERNETES_SERVICE_PORT;
    if (!host || !port) throw new Error("in-cluster config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set (they are in a pod)");
    const tokenFile = path.join(dir, "token");
    if (!existsSync(tokenFile)) throw new Error(`in-cluster config: ${tokenFile} does not exist; is a service account token mounted (automountServiceAccountToken)?`);
    const server = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
    const namespaceFile = path.join(dir, "namespace");
    const namespace = existsSync(namespaceFile) ? readFileSync(namespaceFile, "utf8").trim() : undefined;
    return new Kubeconfig(
      "in-cluster",
      new Map([["in-cluster", { name: "in-cluster", server, caFile: path.join(dir, "ca.crt"), skipTLSVerify: false }]]),
      new Map([["in-cluster", { tokenFile }]]),
      new Map([["in-cluster", { name: "in-cluster", cluster: "in-cluster", user: "in-cluster", namespace }]]),
      "in-cluster",
    );
  }

  /** One kubeconfig file, or several merged as kubectl merges a KUBECONFIG list; `context` overrides their current-context. */
  static fromFiles(files: string[], context?: string): Kubeconfig {
    const raw: RawKubeconfig = { clusters: [], users: [], contexts: [] };
    const clusters = new Map<string, ClusterEntry>();
    const users = new Map<string, UserEntry>();
    const contexts = new Map<string, ContextEntry>();
    for (const file of files) {
      let text: string;
      try {
        text = readFileSync(file, "utf8");
      } catch (error) {
        throw new Error(`kubeconfig ${file}: ${(error as Error).message}`);
      }
      let document: unknown;
      try {
        document = parse(text) ?? {};
      } catch (error) {
        throw new Error(`kubeconfig ${file}: not YAML: ${(error as Error).message}`);
      }
      if (!isRecord(document)) throw new Error(`kubeconfig ${file}: must be a YAML mapping (kind: Config)`);
      const dir = path.dirname(path.resolve(file));
      for (const { name, body, field } of namedEntries(document, "clusters", "cluster", file)) {
        if (clusters.has(name)) continue;
        const entry = absolutePaths(body, ["certificate-authority"], dir);
        raw.clusters.push({ name, cluster: entry });
        clusters.set(name, readCluster(name, entry, `kubeconfig ${file}: ${field}`));
      }
      for (const { name, body, field } of namedEntries(document, "users", "user", file)) {
        if (users.has(name)) continue;
        const entry = absolutePaths(body, ["client-certificate", "client-key", "tokenFile"], dir);
        raw.users.push({ name, user: entry });
        users.set(name, readUser(entry, `kubeconfig ${file}: ${field}`));
      }
      for (const { name, body, field } of namedEntries(document, "contexts", "context", file)) {
        if (contexts.has(name)) continue;
        raw.contexts.push({ name, context: body });
        contexts.set(name, {
          name,
          cluster: requiredString(body.cluster, `kubeconfig ${file}: ${field}.cluster`),
          user: optionalString(body.user, `kubeconfig ${file}: ${field}.user`) ?? "",
          namespace: optionalString(body.namespace, `kubeconfig ${file}: ${field}.namespace`),
        });
      }
      raw["current-context"] ??= optionalString(document["current-context"], `kubeconfig ${file}: current-context`) || undefined;
    }
    const source = files.join(path.delimiter);
    return new Kubeconfig(source, clusters, users, contexts, context ?? raw["current-context"], raw, context === undefined ? "current-context" : "context");
  }

  /** The context names, in file order. */
  get contexts(): string[] {
    return [...this.contextEntries.keys()];
  }

  get currentContext(): string | undefined {
    return this.current;
  }

  /** The current context's namespace, when it sets one (in a pod: the pod's own). */
  get namespace(): string | undefined {
    return this.current === undefined ? undefined : this.contextEntries.get(this.current)?.namespace;
  }

  /** Makes `name` the current context (kubectl --context). */
  useContext(name: string, field = "context"): void {
    const context = this.contextEntries.get(name);
    if (!context) throw new Error(`kubeconfig ${this.source}: ${field} "${name}" is not among its contexts (${this.contexts.join(", ") || "none"})`);
    if (!this.clusters.has(context.cluster)) throw new Error(`kubeconfig ${this.source}: context "${name}" names cluster "${context.cluster}", which it does not define`);
    if (context.user && !this.users.has(context.user)) throw new Error(`kubeconfig ${this.source}: context "${name}" names user "${context.user}", which it does not define`);
    this.current = name;
    this.delegate = undefined;
  }

  getCurrentCluster(): ClusterEntry | null {
    if (this.current === undefined) return null;
    return this.clusters.get(this.contextEntries.get(this.current)!.cluster) ?? null;
  }

  async applyToHTTPSOptions(options: https.RequestOptions): Promise<void> {
    const cluster = this.getCurrentCluster();
    if (!cluster) throw new Error(`kubeconfig ${this.source}: no current-context; set one (kubectl config use-context NAME)`);
    const context = this.contextEntries.get(this.current!)!;
    const user: UserEntry = this.users.get(context.user) ?? {};
    if (user.plugin) {
      await (this.delegate ??= this.libraryConfig()).then((config) => config.applyToHTTPSOptions(options));
      return;
    }
    if (cluster.caData) options.ca = Buffer.from(cluster.caData, "base64");
    else if (cluster.caFile) options.ca = readFileOf(cluster.caFile, "certificate-authority", this.source);
    if (cluster.skipTLSVerify) options.rejectUnauthorized = false;
    if (cluster.tlsServerName) options.servername = cluster.tlsServerName;
    if (user.certData) options.cert = Buffer.from(user.certData, "base64");
    else if (user.certFile) options.cert = readFileOf(user.certFile, "client-certificate", this.source);
    if (user.keyData) options.key = Buffer.from(user.keyData, "base64");
    else if (user.keyFile) options.key = readFileOf(user.keyFile, "client-key", this.source);
    const token = user.token ?? (user.tokenFile ? readFileOf(user.tokenFile, "tokenFile", this.source).toString("utf8").trim() : undefined);
    if (token) options.headers = { ...options.headers, Authorization: `Bearer ${token}` };
    else if (user.username !== undefined) options.auth = `${user.username}:${user.password ?? ""}`;
  }

  /** @kubernetes/client-node's KubeConfig over the same document and context, for plugin credentials (it caches and refreshes them). */
  private async libraryConfig(): Promise<ClusterConfig> {
    const { KubeConfig } = await import("@kubernetes/client-node");
    const config = new KubeConfig();
    config.loadFromString(stringify({ apiVersion: "v1", kind: "Config", ...this.raw, "current-context": this.current }));
    return config;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function optionalString(value: unknown, field: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw new Error(`${field}: must be a string`);
  return value;
}

function requiredString(value: unknown, field: string): string {
  const text = optionalString(value, field);
  if (!text) throw new Error(`${field}: missing`);
  return text;
}

/** `clusters[i].cluster` and the like: each entry's name and body, with the field path for errors. */
function namedEntries(document: Record<string, unknown>, list: string, key: string, file: string): { name: string; body: Record<string, unknown>; field: string }[] {
  const entries = document[list] ?? [];
  if (!Array.isArray(entries)) throw new Error(`kubeconfig ${file}: ${list} must be a list`);
  return entries.map((entry: unknown, index) => {
    const field = `${list}[${index}]`;
    if (!isRecord(entry)) throw new Error(`kubeconfig ${file}: ${field} must be a mapping with name and ${key}`);
    const body = entry[key] ?? {};
    if (!isRecord(body)) throw new Error(`kubeconfig ${file}: ${field}.${key} must be a mapping`);
    return { name: requiredString(entry.name, `kubeconfig ${file}: ${field}.name`), body, field: `${field}.${key}` };
  });
}

/** Relative file paths in a kubeconfig are relative to the kubeconfig's own folder (as kubectl reads them). */
function absolutePaths(body: Record<string, unknown>, keys: string[], dir: string): Record<string, unknown> {
  const copy = { ...body };
  for (const key of keys) if (typeof copy[key] === "string" && copy[key] !== "") copy[key] = path.resolve(dir, copy[key]);
  return copy;
}

const BASE64 = /^[A-Za-z0-9+/\s]*={0,2}\s*$/;

function base64(value: unknown, field: string): string | undefined {
  const text = optionalString(value, field);
  if (text !== undefined && !BASE64.test(text)) throw new Error(`${field}: not base64`);
  return text || undefined;
}

function readCluster(name: string, body: Record<string, unknown>, field: string): ClusterEntry {
  const server = requiredString(body.server, `${field}.server`);
  if (!/^https?:\/\//.test(server)) throw new Error(`${field}.server: ${server} must be an http(s) URL`);
  const skip = body["insecure-skip-tls-verify"];
  if (skip !== undefined && typeof skip !== "boolean") throw new Error(`${field}.insecure-skip-tls-verify: must be true or false`);
  return {
    name,
    server,
    caData: base64(body["certificate-authority-data"], `${field}.certificate-authority-data`),
    caFile: optionalString(body["certificate-authority"], `${field}.certificate-authority`) || undefined,
    skipTLSVerify: skip === true,
    tlsServerName: optionalString(body["tls-server-name"], `${field}.tls-server-name`) || undefined,
  };
}

function readUser(body: Record<string, unknown>, field: string): UserEntry {
  return {
    token: optionalString(body.token, `${field}.token`) || undefined,
    tokenFile: optionalString(body.tokenFile, `${field}.tokenFile`) || undefined,
    certData: base64(body["client-certificate-data"], `${field}.client-certificate-data`),
    certFile: optionalString(body["client-certificate"], `${field}.client-certificate`) || undefined,
    keyData: base64(body["client-key-data"], `${field}.client-key-data`),
    keyFile: optionalString(body["client-key"], `${field}.client-key`) || undefined,
    username: optionalString(body.username, `${field}.username`),
    password: optionalString(body.password, `${field}.password`),
    plugin: body.exec ? "exec" : body["auth-provider"] ? "auth-provider" : undefined,
  };
}

function readFileOf(file: string, field: string, source: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new Error(`kubeconfig ${source}: ${field} ${file}: ${(error as Error).message}`);
  }
}
