import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { kueueCrds, kueueWebhookConfigurations } from "./kueue.ts";

// The manifests are Kueue's own (config/components of the module); these fixtures have the same
// shape, so that the selection rules are checked without a build.

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function configDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "kueue-config-"));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), text);
  }
  return dir;
}

const crd = (name: string) => `apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: ${name}\nspec:\n  group: kueue.x-k8s.io\n`;
const conversionPatch = (name: string) =>
  [
    "apiVersion: apiextensions.k8s.io/v1",
    "kind: CustomResourceDefinition",
    "metadata:",
    `  name: ${name}`,
    "spec:",
    "  conversion:",
    "    strategy: Webhook",
    "    webhook:",
    "      clientConfig:",
    "        service: {namespace: system, name: webhook-service, path: /convert}",
    "      conversionReviewVersions: [v1]",
    "",
  ].join("\n");

describe("kueueCrds", () => {
  it("installs the resources its kustomization lists, with a conversion webhook by URL only where a listed patch asks for one", async () => {
    const dir = await configDir({
      "crd/kustomization.yaml": [
        "resources:",
        "- bases/workloads.yaml",
        "- bases/resourceflavors.yaml",
        "patches:",
        "- path: patches/webhook_in_workloads.yaml",
        "#- path: patches/webhook_in_resourceflavors.yaml",
        "",
      ].join("\n"),
      "crd/bases/workloads.yaml": crd("workloads.kueue.x-k8s.io"),
      "crd/bases/resourceflavors.yaml": crd("resourceflavors.kueue.x-k8s.io"),
      "crd/bases/topologies.yaml": crd("topologies.kueue.x-k8s.io"),
      "crd/patches/webhook_in_workloads.yaml": conversionPatch("workloads.kueue.x-k8s.io"),
      "crd/patches/webhook_in_resourceflavors.yaml": conversionPatch("resourceflavors.kueue.x-k8s.io"),
    });
    const crds = await kueueCrds(dir, { url: "https://127.0.0.1:9443/convert", caBundle: "Q0E=" });
    expect(crds.map((object) => object.metadata?.name)).toEqual(["workloads.kueue.x-k8s.io", "resourceflavors.kueue.x-k8s.io"]);
    const [workloads, flavors] = crds as (typeof crds[number] & { spec: Record<string, unknown> })[];
    expect(workloads!.spec.conversion).toEqual({
      strategy: "Webhook",
      webhook: { conversionReviewVersions: ["v1"], clientConfig: { url: "https://127.0.0.1:9443/convert", caBundle: "Q0E=" } },
    });
    expect(flavors!.spec.conversion).toBeUndefined();
  });

  it("names the file when the kustomization lists nothing", async () => {
    const dir = await configDir({ "crd/kustomization.yaml": "patches: []\n" });
    await expect(kueueCrds(dir, { url: "u", caBundle: "c" })).rejects.toThrow(`${dir}/crd/kustomization.yaml lists no resources`);
  });
});

describe("kueueWebhookConfigurations", () => {
  const webhook = (name: string, group: string, servicePath: string) =>
    [
      "- admissionReviewVersions: [v1]",
      "  clientConfig:",
      `    service: {name: webhook-service, namespace: system, path: ${servicePath}}`,
      "  failurePolicy: Fail",
      `  name: ${name}`,
      "  rules:",
      `  - apiGroups: ["${group}"]`,
      "    apiVersions: [v1]",
      "    operations: [CREATE]",
      "    resources: [things]",
      "  sideEffects: None",
    ].join("\n");

  it("keeps only the webhooks for Kueue's own kinds, called by URL, under the names the cert rotator looks up", async () => {
    const dir = await configDir({
      "webhook/manifests.yaml": [
        "---",
        "apiVersion: admissionregistration.k8s.io/v1",
        "kind: MutatingWebhookConfiguration",
        "metadata:",
        "  name: mutating-webhook-configuration",
        "webhooks:",
        webhook("mpod.kb.io", "", "/mutate--v1-pod"),
        webhook("mworkload.kb.io", "kueue.x-k8s.io", "/mutate-kueue-x-k8s-io-v1beta2-workload"),
        "---",
        "apiVersion: admissionregistration.k8s.io/v1",
        "kind: ValidatingWebhookConfiguration",
        "metadata:",
        "  name: validating-webhook-configuration",
        "webhooks:",
        webhook("vjob.kb.io", "batch", "/validate-batch-v1-job"),
        webhook("vworkload.kb.io", "kueue.x-k8s.io", "/validate-kueue-x-k8s-io-v1beta2-workload"),
        "",
      ].join("\n"),
    });
    const configurations = (await kueueWebhookConfigurations(dir, (urlPath) => `https://127.0.0.1:1${urlPath}`, "Q0E=")) as {
      kind: string;
      metadata: { name: string };
      webhooks: { name: string; clientConfig: unknown; failurePolicy: string }[];
    }[];
    expect(configurations.map((configuration) => [configuration.kind, configuration.metadata.name, configuration.webhooks.map((hook) => hook.name)])).toEqual([
      ["MutatingWebhookConfiguration", "kueue-mutating-webhook-configuration", ["mworkload.kb.io"]],
      ["ValidatingWebhookConfiguration", "kueue-validating-webhook-configuration", ["vworkload.kb.io"]],
    ]);
    expect(configurations[1]!.webhooks[0]).toMatchObject({
      clientConfig: { url: "https://127.0.0.1:1/validate-kueue-x-k8s-io-v1beta2-workload", caBundle: "Q0E=" },
      failurePolicy: "Fail",
    });
  });
});
