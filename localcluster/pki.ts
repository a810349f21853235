import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { KubeletTls } from "./kubelet-server.ts";

const run = promisify(execFile);

/** Throwaway credentials for a loopback control plane. Nothing here leaves the machine. */
export interface Pki {
  caCert: string;
  servingCert: string;
  servingKey: string;
  serviceAccountKey: string;
  serviceAccountPublicKey: string;
  /** The API server's client certificate towards kubelets (the pod runner's log endpoint). */
  kubeletClientCert: string;
  kubeletClientKey: string;
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
 * Makes a CA, a serving certificate for 127.0.0.1 and localhost, the API server's kubelet
 * client certificate, and a service-account key pair.
 */
export async function makePki(dir: string): Promise<Pki> {
  await mkdir(dir, { recursive: true });
  const file = (name: string) => path.join(dir, name);
  await openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=kubetune-local-ca"], dir);
  await writeFile(file("serving.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  await openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "serving.key", "-out", "serving.csr", "-subj", "/CN=127.0.0.1"], dir);
  await openssl(["x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "serving.crt", "-days", "30", "-extfile", "serving.ext"], dir);
  await writeFile(file("client.ext"), "extendedKeyUsage=clientAuth\n");
  await openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "kubelet-client.key", "-out", "kubelet-client.csr", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client"], dir);
  await openssl(["x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "kubelet-client.crt", "-days", "30", "-extfile", "client.ext"], dir);
  await openssl(["genrsa", "-out", "sa.key", "2048"], dir);
  await openssl(["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir);
  return {
    caCert: file("ca.crt"),
    servingCert: file("serving.crt"),
    servingKey: file("serving.key"),
    serviceAccountKey: file("sa.key"),
    serviceAccountPublicKey: file("sa.pub"),
    kubeletClientCert: file("kubelet-client.crt"),
    kubeletClientKey: file("kubelet-client.key"),
  };
}

/** What the pod runner's log endpoint needs from a control plane's PKI folder: the loopback serving certificate and the CA of the API server's client certificate. */
export function kubeletTls(pkiDir: string): KubeletTls {
  return { certFile: path.join(pkiDir, "serving.crt"), keyFile: path.join(pkiDir, "serving.key"), clientCaFile: path.join(pkiDir, "ca.crt") };
}
