import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ApiError, resourcePath } from "../../kube/client.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectl } from "./harness.ts";

describe("the test control plane", () => {
  it("is a real kube-apiserver of a current minor version", async () => {
    const version = await kubeClient().get<{ gitVersion: string; minor: string }>("/version");
    console.log(`integration tests run against kube-apiserver ${version.gitVersion}`);
    expect(version.gitVersion).toBe(cluster().kubeApiserverVersion);
    expect(Number.parseInt(version.minor, 10)).toBeGreaterThanOrEqual(30);
  });

  it("enforces a CRD's schema: an invalid custom resource is refused with 422", async () => {
    const applied = kubectl(["apply", "-f", "-"], readFileSync("tests/fixtures/sample-crd.yaml", "utf8"));
    expect(applied.stderr).toBe("");
    expect(applied.status).toBe(0);
    const client = kubeClient();
    const namespace = await createNamespace("crd");
    const widgets = resourcePath({ group: "sample.kubetune.io", version: "v1", plural: "widgets", namespace });
    const widget = (size: unknown) => ({ apiVersion: "sample.kubetune.io/v1", kind: "Widget", metadata: { name: `w${String(size)}` }, spec: { size } });

    // The CRD is served a moment after it is created.
    await eventually("the Widget CRD to be served", async () => (await client.create(widgets, widget(3))) ?? undefined);

    const refused = await client.create(widgets, widget(0)).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ApiError);
    expect((refused as ApiError).status).toBe(422);
    expect((refused as ApiError).message).toContain("spec.size");

    const byKubectl = kubectl(["create", "-n", namespace, "-f", "-"], JSON.stringify(widget("big")));
    expect(byKubectl.status).not.toBe(0);
    expect(byKubectl.stderr).toMatch(/spec\.size.*integer/);
  });

  it("runs Kubernetes' garbage collector: dependents of a deleted owner go (a custom resource's too), background and foreground", async () => {
    const client = kubeClient();
    const namespace = await createNamespace("gc");
    const configMaps = resourcePath({ group: "", version: "v1", plural: "configmaps", namespace });
    const widgets = resourcePath({ group: "sample.kubetune.io", version: "v1", plural: "widgets", namespace });
    kubectl(["apply", "-f", "-"], readFileSync("tests/fixtures/sample-crd.yaml", "utf8"));
    const owner = async (name: string) =>
      eventually(`the Widget ${name}`, async () => client.create<{ metadata: { uid: string } }>(widgets, { apiVersion: "sample.kubetune.io/v1", kind: "Widget", metadata: { name }, spec: { size: 1 } }));
    const dependent = (name: string, owners: { name: string; uid: string }[]) =>
      client.create(configMaps, {
        metadata: { name, ownerReferences: owners.map((each) => ({ apiVersion: "sample.kubetune.io/v1", kind: "Widget", name: each.name, uid: each.uid, blockOwnerDeletion: true })) },
      });
    const exists = (name: string) => client.get(`${configMaps}/${name}`).then(() => true, () => false);

    const background = await owner("background");
    const kept = await owner("kept");
    await dependent("of-background", [{ name: "background", uid: background.metadata.uid }]);
    await dependent("of-both", [{ name: "background", uid: background.metadata.uid }, { name: "kept", uid: kept.metadata.uid }]);
    await client.delete(`${widgets}/background`);
    await eventually("the dependent of the deleted owner to go", async () => ((await exists("of-background")) ? undefined : true), 60_000);
    // A dependent with another owner that still exists stays (the collector only drops the reference to the deleted one).
    expect(await exists("of-both")).toBe(true);

    // Foreground: the owner waits, being deleted, until its blocking dependents are gone.
    const foreground = await owner("foreground");
    await dependent("of-foreground", [{ name: "foreground", uid: foreground.metadata.uid }]);
    await client.delete(`${widgets}/foreground`, { propagationPolicy: "Foreground" });
    await eventually("the foreground owner and its dependent to go", async () => ((await exists("of-foreground")) || (await client.get(`${widgets}/foreground`).then(() => true, () => false)) ? undefined : true), 60_000);
  });
});
