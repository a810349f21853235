import { mkdir, mkdtemp, readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import type { TLSSocket } from "node:tls";
import { stringify } from "yaml";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { kubeconfigYaml } from "../localcluster/controlplane.ts";
import { makePki, type Pki } from "../localcluster/pki.ts";
import { KubeClient } from "./client.ts";
import { Kubeconfig } from "./config-loader.ts";

describe("Kubeconfig", () => {
  let pki: Pki;
  let dir: string;
  const cleanups: (() => void)[] = [];
  beforeAll(async () => {
    pki = await makePki(await mkdtemp(path.join(os.tmpdir(), "kubetune-config-loader-pki-")));
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) cleanup();
    dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-config-loader-"));
  });
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-config-loader-"));
  });

  /** An API server stand-in that answers with what authenticated the request: the bearer token, basic auth, or the client certificate's subject. */
  async function apiServer(): Promise<number> {
    const server = https.createServer({ cert: await readFile(pki.servingCert), key: await readFile(pki.servingKey), ca: await readFile(pki.caCert), requestCert: true, rejectUnauthorized: false }, (request, response) => {
      const peer = (request.socket as TLSSocket).getPeerCertificate();
      const clientCert = (request.socket as TLSSocket).authorized && peer.subject ? `CN=${String(peer.subject.CN)}` : "";
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ authorization: request.headers.authorization ?? "", clientCert }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => {
      server.closeAllConnections();
      server.close();
    });
    return (server.address() as AddressInfo).port;
  }

  async function whoAmI(client: KubeClient): Promise<{ authorization: string; clientCert: string }> {
    try {
      return await client.get("/api/v1/namespaces/default");
    } finally {
      client.close();
    }
  }

  it("reads the kubeconfig localcluster writes (token and CA data) and authenticates with it", async () => {
    const port = await apiServer();
    const file = path.join(dir, "kubeconfig");
    await writeFile(file, kubeconfigYaml(`https://127.0.0.1:${port}`, await readFile(pki.caCert), "admin-token"));
    const config = Kubeconfig.load(file, { env: {} });
    expect(config.currentContext).toBe("kubetune-local");
    expect(config.getCurrentCluster()).toEqual({ name: "kubetune-local", server: `https://127.0.0.1:${port}`, caData: (await readFile(pki.caCert)).toString("base64"), caFile: undefined, skipTLSVerify: false, tlsServerName: undefined });
    expect(await whoAmI(new KubeClient(config))).toEqual({ authorization: "Bearer admin-token", clientCert: "" });
  });

  it("reads a client certificate, key and CA from files relative to the kubeconfig's folder", async () => {
    const port = await apiServer();
    const folder = path.join(dir, "nested");
    await mkdir(folder);
    for (const [from, to] of [[pki.caCert, "ca.crt"], [pki.kubeletClientCert, "client.crt"], [pki.kubeletClientKey, "client.key"]] as const) await writeFile(path.join(folder, to), await readFile(from));
    const file = path.join(folder, "config");
    await writeFile(
      file,
      stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [{ name: "c", cluster: { server: `https://127.0.0.1:${port}`, "certificate-authority": "ca.crt" } }],
        users: [{ name: "u", user: { "client-certificate": "client.crt", "client-key": "./client.key" } }],
        contexts: [{ name: "x", context: { cluster: "c", user: "u", namespace: "team-a" } }],
        "current-context": "x",
      }),
    );
    // Loaded from another working directory: the paths still resolve against the kubeconfig's folder.
    const config = Kubeconfig.load(path.relative(process.cwd(), file), { env: {} });
    expect(config.namespace).toBe("team-a");
    expect(config.getCurrentCluster()?.caFile).toBe(path.join(folder, "ca.crt"));
    const answer = await whoAmI(new KubeClient(config));
    expect(answer.authorization).toBe("");
    expect(answer.clientCert).toMatch(/^CN=\S+/);
  });

  it("sends basic auth from username and password, and data fields take precedence over files", async () => {
    const port = await apiServer();
    const file = path.join(dir, "config");
    await writeFile(
      file,
      stringify({
        clusters: [{ name: "c", cluster: { server: `https://127.0.0.1:${port}`, "certificate-authority-data": (await readFile(pki.caCert)).toString("base64"), "certificate-authority": "/does/not/exist" } }],
        users: [{ name: "u", user: { username: "alice", password: "s3cret" } }],
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
        "current-context": "x",
      }),
    );
    expect(await whoAmI(KubeClient.load(file))).toEqual({ authorization: `Basic ${Buffer.from("alice:s3cret").toString("base64")}`, clientCert: "" });
  });

  it("loads the in-cluster service account from its mounted folder, and rereads a rotated token", async () => {
    const port = await apiServer();
    const mounted = path.join(dir, "serviceaccount");
    await mkdir(mounted);
    await writeFile(path.join(mounted, "token"), "token-one\n");
    await writeFile(path.join(mounted, "ca.crt"), await readFile(pki.caCert));
    await writeFile(path.join(mounted, "namespace"), "kubetune-system");
    const env = { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: String(port) };
    // No KUBECONFIG and no ~/.kube/config: the service account, as in a pod.
    const config = Kubeconfig.load(undefined, { env, home: dir, serviceAccountDir: mounted });
    expect(config.source).toBe("in-cluster");
    expect(config.namespace).toBe("kubetune-system");
    expect(config.getCurrentCluster()).toMatchObject({ server: `https://127.0.0.1:${port}`, caFile: path.join(mounted, "ca.crt"), skipTLSVerify: false });
    expect(await whoAmI(new KubeClient(config))).toEqual({ authorization: "Bearer token-one", clientCert: "" });
    // The kubelet rotates bound tokens in place; the next credentials read sees the new one.
    await writeFile(path.join(mounted, "token"), "token-two\n");
    const options: https.RequestOptions = {};
    await config.applyToHTTPSOptions(options);
    expect(options.headers).toEqual({ Authorization: "Bearer token-two" });
    expect(Kubeconfig.inCluster({ env: { KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "443" }, serviceAccountDir: mounted }).getCurrentCluster()?.server).toBe("https://[fd00::1]:443");
  });

  it("prefers KUBECONFIG and ~/.kube/config to the service account, and merges a KUBECONFIG list with the first file winning", async () => {
    const first = path.join(dir, "first");
    const second = path.join(dir, "second");
    await writeFile(first, stringify({ clusters: [{ name: "c", cluster: { server: "https://first:6443" } }], contexts: [{ name: "a", context: { cluster: "c" } }] }));
    await writeFile(
      second,
      stringify({
        clusters: [{ name: "c", cluster: { server: "https://second:6443" } }, { name: "d", cluster: { server: "https://d:6443" } }],
        contexts: [{ name: "a", context: { cluster: "d" } }, { name: "b", context: { cluster: "d", namespace: "ns-b" } }],
        "current-context": "a",
      }),
    );
    const env = { KUBECONFIG: [path.join(dir, "missing"), first, second].join(path.delimiter), KUBERNETES_SERVICE_HOST: "10.0.0.1", KUBERNETES_SERVICE_PORT: "443" };
    const merged = Kubeconfig.load(undefined, { env, home: dir });
    expect(merged.contexts).toEqual(["a", "b"]);
    expect(merged.getCurrentCluster()?.server).toBe("https://first:6443");
    merged.useContext("b");
    expect([merged.getCurrentCluster()?.server, merged.namespace]).toEqual(["https://d:6443", "ns-b"]);
    expect(Kubeconfig.load(undefined, { env, home: dir, context: "b" }).namespace).toBe("ns-b");

    await mkdir(path.join(dir, ".kube"));
    await writeFile(path.join(dir, ".kube", "config"), await readFile(second));
    expect(Kubeconfig.load(undefined, { env: { KUBERNETES_SERVICE_HOST: "10.0.0.1", KUBERNETES_SERVICE_PORT: "443" }, home: dir }).source).toBe(path.join(dir, ".kube", "config"));
  });

  it("names the file and the field of what is wrong", async () => {
    const file = path.join(dir, "config");
    const load = async (document: unknown) => {
      await writeFile(file, typeof document === "string" ? document : stringify(document));
      try {
        Kubeconfig.load(file, { env: {} });
        return "loaded";
      } catch (error) {
        return (error as Error).message;
      }
    };
    const cluster = { name: "c", cluster: { server: "https://h:6443" } };
    expect(await load({ clusters: [cluster], contexts: [{ name: "a", context: { cluster: "c" } }], "current-context": "b" })).toBe(`kubeconfig ${file}: current-context "b" is not among its contexts (a)`);
    expect(await load({ clusters: [cluster], contexts: [{ name: "a", context: { cluster: "c", user: "nobody" } }], "current-context": "a" })).toBe(
      `kubeconfig ${file}: context "a" names user "nobody", which it does not define`,
    );
    expect(await load({ clusters: [{ name: "c", cluster: {} }] })).toBe(`kubeconfig ${file}: clusters[0].cluster.server: missing`);
    expect(await load({ clusters: [cluster], users: [{ name: "u", user: { "client-key-data": "not base64!" } }] })).toBe(`kubeconfig ${file}: users[0].user.client-key-data: not base64`);
    expect(await load("clusters: [unclosed")).toMatch(new RegExp(`^kubeconfig ${file}: not YAML: `));
    expect(() => Kubeconfig.load(path.join(dir, "absent"), { env: {} })).toThrow(`kubeconfig ${path.join(dir, "absent")}: ENOENT`);
    expect(() => Kubeconfig.load(undefined, { env: {}, home: dir })).toThrow(/^no kubeconfig: give --kubeconfig, set KUBECONFIG/);
    expect(() => Kubeconfig.load(undefined, { env: { KUBECONFIG: path.join(dir, "absent") } })).toThrow(`KUBECONFIG=${path.join(dir, "absent")}: none of these files exists`);
    expect(() => Kubeconfig.inCluster({ env: { KUBERNETES_SERVICE_HOST: "10.0.0.1", KUBERNETES_SERVICE_PORT: "443" }, serviceAccountDir: dir })).toThrow(`in-cluster config: ${path.join(dir, "token")} does not exist`);

    await writeFile(file, stringify({ clusters: [cluster], users: [{ name: "u", user: { tokenFile: "gone" } }], contexts: [{ name: "a", context: { cluster: "c", user: "u" } }], "current-context": "a" }));
    await expect(Kubeconfig.load(file, { env: {} }).applyToHTTPSOptions({})).rejects.toThrow(`kubeconfig ${file}: tokenFile ${path.join(dir, "gone")}: ENOENT`);
  });

  it("hands exec credential plugins to @kubernetes/client-node and sends the token the plugin prints", async () => {
    const port = await apiServer();
    const plugin = path.join(dir, "plugin.mjs");
    await writeFile(plugin, `console.log(JSON.stringify({ apiVersion: "client.authentication.k8s.io/v1", kind: "ExecCredential", status: { token: "from-" + process.env.WHO } }));\n`);
    const file = path.join(dir, "config");
    await writeFile(
      file,
      stringify({
        clusters: [{ name: "c", cluster: { server: `https://127.0.0.1:${port}`, "certificate-authority-data": (await readFile(pki.caCert)).toString("base64") } }],
        users: [{ name: "u", user: { exec: { apiVersion: "client.authentication.k8s.io/v1", command: process.execPath, args: [plugin], env: [{ name: "WHO", value: "plugin" }], interactiveMode: "Never" } } }],
        contexts: [{ name: "a", context: { cluster: "c", user: "u" } }],
        "current-context": "a",
      }),
    );
    expect(await whoAmI(KubeClient.load(file))).toEqual({ authorization: "Bearer from-plugin", clientCert: "" });
  });
});
