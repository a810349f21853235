import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const buildDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "build");

export type BinaryName = "kube-apiserver" | "kubectl" | "garbage-collector" | "etcd" | "minio" | "helm" | "kueue";

/** The pinned versions, from build/versions.env (the one place they are written). */
export function pinnedVersions(): { kubernetes: string; etcd: string; minio: string; helm: string; kueue: string } {
  const values = Object.fromEntries(
    readFileSync(path.join(buildDir, "versions.env"), "utf8")
      .split("\n")
      .filter((line) => /^[A-Z_]+=/.test(line))
      .map((line) => line.split("=", 2) as [string, string]),
  );
  return {
    kubernetes: values.KUBERNETES_VERSION!,
    etcd: values.ETCD_VERSION!,
    minio: values.MINIO_VERSION!,
    helm: values.HELM_VERSION!,
    kueue: values.KUEUE_VERSION!,
  };
}

/** Where built binaries are cached, keyed by version. */
export function cacheDir(): string {
  return process.env.KUBETUNE_CACHE_DIR ?? path.join(os.homedir(), ".cache", "kubetune");
}

const overrideVariable: Record<BinaryName, string> = {
  "kube-apiserver": "KUBETUNE_KUBE_APISERVER",
  kubectl: "KUBETUNE_KUBECTL",
  "garbage-collector": "KUBETUNE_GARBAGE_COLLECTOR",
  etcd: "KUBETUNE_ETCD",
  minio: "KUBETUNE_MINIO",
  helm: "KUBETUNE_HELM",
  kueue: "KUBETUNE_KUEUE",
};

/** Which pinned version each binary is built at. */
const versionOf: Record<BinaryName, keyof ReturnType<typeof pinnedVersions>> = {
  "kube-apiserver": "kubernetes",
  kubectl: "kubernetes",
  "garbage-collector": "kubernetes",
  etcd: "etcd",
  minio: "minio",
  helm: "helm",
  kueue: "kueue",
};

function cachedPath(name: BinaryName): string {
  const version = pinnedVersions()[versionOf[name]];
  // The garbage collector is built from our own source too (build/garbage-collector/main.go): its key holds that
  // source's hash, as build-binaries.sh computes it, so that an edit builds it again.
  const key = name === "garbage-collector" ? `${version}-${createHash("sha256").update(readFileSync(path.join(buildDir, "garbage-collector", "main.go"))).digest("hex").slice(0, 10)}` : version;
  return path.join(cacheDir(), "bin", `${name}-${key}`);
}

/**
 * The Kueue manifests that go with the manager: crd/ (bases/ and the kustomization naming the
 * CRDs with a conversion webhook) and webhook/manifests.yaml, as in config/components of the
 * sigs.k8s.io/kueue module. The build copies them beside the cached binary;
 * KUBETUNE_KUEUE_CONFIG names another folder (with KUBETUNE_KUEUE, for a manager built elsewhere).
 */
export function kueueConfigDir(): string {
  return process.env.KUBETUNE_KUEUE_CONFIG ?? `${cachedPath("kueue")}-config`;
}

/**
 * The path of each binary: from its KUBETUNE_* variable when set, else from the cache, building
 * the missing ones from their Go modules first (minutes, once).
 */
export async function resolveBinaries(names: BinaryName[], log: (line: string) => void = () => {}): Promise<Record<BinaryName, string>> {
  const result = {} as Record<BinaryName, string>;
  const missing: BinaryName[] = [];
  for (const name of names) {
    const override = process.env[overrideVariable[name]];
    if (override) {
      if (!existsSync(override)) throw new Error(`${overrideVariable[name]}=${override}: no such file`);
      result[name] = override;
    } else {
      result[name] = cachedPath(name);
      if (!existsSync(result[name])) missing.push(name);
    }
    // The manager is no use without its CRDs, which the same build step provides.
    if (name === "kueue" && !existsSync(kueueConfigDir()) && !missing.includes(name)) {
      if (override || process.env.KUBETUNE_KUEUE_CONFIG) {
        throw new Error(
          `${process.env.KUBETUNE_KUEUE_CONFIG ? "KUBETUNE_KUEUE_CONFIG" : "the Kueue manifests folder"} ${kueueConfigDir()}: no such folder; ` +
            "point KUBETUNE_KUEUE_CONFIG at a copy of config/components (crd/ and webhook/) of the sigs.k8s.io/kueue module of the same version",
        );
      }
      missing.push(name);
    }
  }
  if (missing.length > 0) await build(missing, log);
  return result;
}

async function build(names: BinaryName[], log: (line: string) => void): Promise<void> {
  log(`building ${names.join(", ")} from Go modules into ${cacheDir()}/bin (first run only)`);
  await new Promise<void>((resolve, reject) => {
    const child = spawn("bash", [path.join(buildDir, "build-binaries.sh"), ...names], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      for (const line of chunk.toString().split("\n")) if (line.trim()) log(line);
    });
    child.once("error", (error) => reject(new Error(`cannot run build-binaries.sh: ${error.message}`)));
    child.once("exit", (code) => {
      if (code === 0) resolve();
      else {
        const reason = stderr.split("\n").filter((line) => line.includes("error:")).pop() ?? stderr.trim().split("\n").pop();
        reject(new Error(reason ?? `build-binaries.sh exited with ${code}`));
      }
    });
  });
}
