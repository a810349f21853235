import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { stringify } from "yaml";
import { beforeAll, describe, expect, it } from "vitest";
import { connect, UserError } from "./cluster.ts";

// The CLI reads kubeconfigs with kubetune's own loader (kube/config-loader.ts), as the operator
// does: these are the choices the CLI makes on top of it, and the errors it turns into advice.

let dir: string;
let home: string;

function kubeconfig(contexts: { name: string; namespace?: string; server: string; user?: Record<string, unknown> }[], current?: string): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: contexts.map((context) => ({ name: context.name, cluster: { server: context.server, "insecure-skip-tls-verify": true } })),
    users: contexts.map((context) => ({ name: context.name, user: context.user ?? { token: `token-${context.name}` } })),
    contexts: contexts.map((context) => ({ name: context.name, context: { cluster: context.name, user: context.name, ...(context.namespace ? { namespace: context.namespace } : {}) } })),
    ...(current ? { "current-context": current } : {}),
  });
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-cli-cluster-"));
  home = await mkdtemp(path.join(os.tmpdir(), "kubetune-cli-home-"));
  await writeFile(
    path.join(dir, "two.yaml"),
    kubeconfig(
      [
        { name: "dev", namespace: "team-a", server: "https://dev.example:6443" },
        { name: "prod", server: "https://prod.example:6443" },
      ],
      "dev",
    ),
  );
});

describe("connect", () => {
  it("uses the current context's server and namespace; -n and --context override them", () => {
    const file = path.join(dir, "two.yaml");
    expect(connect({ kubeconfig: file }, {}, home)).toMatchObject({ server: "https://dev.example:6443", namespace: "team-a", namespaceGiven: false });
    expect(connect({ kubeconfig: file, namespace: "mine" }, {}, home)).toMatchObject({ namespace: "mine", namespaceGiven: true });
    expect(connect({ kubeconfig: file, context: "prod" }, {}, home)).toMatchObject({ server: "https://prod.example:6443", namespace: "default" });
  });

  it("finds the kubeconfig as kubectl does: --kubeconfig, else the first file of KUBECONFIG, else ~/.kube/config", async () => {
    const other = path.join(dir, "other.yaml");
    await writeFile(other, kubeconfig([{ name: "other", server: "https://other.example:6443" }], "other"));
    expect(connect({}, { KUBECONFIG: [path.join(dir, "two.yaml"), other].join(path.delimiter) }, home).server).toBe("https://dev.example:6443");
    expect(connect({ kubeconfig: other }, { KUBECONFIG: path.join(dir, "two.yaml") }, home).server).toBe("https://other.example:6443");
    const withHomeConfig = await mkdtemp(path.join(os.tmpdir(), "kubetune-cli-home-"));
    await mkdir(path.join(withHomeConfig, ".kube"));
    await writeFile(path.join(withHomeConfig, ".kube", "config"), kubeconfig([{ name: "home", server: "https://home.example:6443" }], "home"));
    expect(connect({}, {}, withHomeConfig).server).toBe("https://home.example:6443");
  });

  it("keeps a user whose credentials come from an exec plugin (the library runs it, on the first request)", async () => {
    const file = path.join(dir, "exec.yaml");
    await writeFile(file, kubeconfig([{ name: "cloud", server: "https://cloud.example:443", user: { exec: { apiVersion: "client.authentication.k8s.io/v1", command: "cloud-login", interactiveMode: "Never" } } }], "cloud"));
    expect(connect({ kubeconfig: file }, {}, home)).toMatchObject({ server: "https://cloud.example:443", namespace: "default" });
  });

  it("says what is wrong, naming the file or the context", async () => {
    const missing = path.join(dir, "missing.yaml");
    expect(() => connect({ kubeconfig: missing }, {}, home)).toThrow(new UserError(`no cluster: the kubeconfig ${missing} (from --kubeconfig) does not exist; start the local one with eval "$(npx kubetune dev-cluster up)", or point KUBECONFIG (or --kubeconfig) at your cluster's kubeconfig`));
    expect(() => connect({}, { KUBECONFIG: missing }, home)).toThrow(`no cluster: the kubeconfig ${missing} (from KUBECONFIG) does not exist`);
    expect(() => connect({}, {}, home)).toThrow(`no cluster: KUBECONFIG is not set and ${path.join(home, ".kube", "config")} does not exist`);
    expect(() => connect({ kubeconfig: path.join(dir, "two.yaml"), context: "staging" }, {}, home)).toThrow(new UserError('the kubeconfig has no context "staging"; it has: dev, prod'));
    const broken = path.join(dir, "broken.yaml");
    await writeFile(broken, stringify({ clusters: [{ name: "x", cluster: { server: "dev.example:6443" } }], contexts: [], users: [] }));
    expect(() => connect({ kubeconfig: broken }, {}, home)).toThrow(`cannot read the kubeconfig ${broken}: kubeconfig ${broken}: clusters[0].cluster.server: dev.example:6443 must be an http(s) URL`);
    const noCurrent = path.join(dir, "no-current.yaml");
    await writeFile(noCurrent, kubeconfig([{ name: "dev", server: "https://dev.example:6443" }]));
    expect(() => connect({ kubeconfig: noCurrent }, {}, home)).toThrow(/no current cluster/);
  });
});
