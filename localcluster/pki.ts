import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Throwaway credentials for a loopback control plane. Nothing here leaves the machine. */
export interface Pki {
  caCert: string;
  servingCert: string;
  servingKey: string;
  serviceAccountKey: string;
  serviceAccountPublicKey: string;
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

/** Makes a CA, a serving certificate for 127.0.0.1 and localhost, and a service-account key pair. */
export async function makePki(dir: string): Promise<Pki> {
  await mkdir(dir, { recursive: true });
  const file = (name: string) => path.join(dir, name);
  await openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=kubetune-local-ca"], dir);
  await writeFile(file("serving.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  await openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "serving.key", "-out", "serving.csr", "-subj", "/CN=127.0.0.1"], dir);
  await openssl(["x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "serving.crt", "-days", "30", "-extfile", "serving.ext"], dir);
  await openssl(["genrsa", "-out", "sa.key", "2048"], dir);
  await openssl(["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir);
  return {
    caCert: file("ca.crt"),
    servingCert: file("serving.crt"),
    servingKey: file("serving.key"),
    serviceAccountKey: file("sa.key"),
    serviceAccountPublicKey: file("sa.pub"),
  };
}
