import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { assertPortFree, freePort, startProcess, waitFor, type ManagedProcess } from "./process.ts";

/** A running loopback MinIO server. */
export interface S3Server {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  /** The output of `minio --version`, first line. */
  version: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  process: ManagedProcess;
  stop(): Promise<void>;
}

/**
 * Starts MinIO on loopback with its data under `dir`. Given the port and credentials of an
 * earlier server on the same `dir`, it is that server again (a restart, for fault tests).
 */
export async function startMinio(options: { dir: string; minio: string; port?: number; credentials?: { accessKeyId: string; secretAccessKey: string } }): Promise<S3Server> {
  const dataDir = path.join(options.dir, "minio-data");
  await mkdir(dataDir, { recursive: true });
  await mkdir(path.join(options.dir, "logs"), { recursive: true });
  const port = options.port ?? (await freePort());
  const consolePort = await freePort();
  await assertPortFree(port, "MinIO");
  const accessKeyId = options.credentials?.accessKeyId ?? `kubetune${randomBytes(4).toString("hex")}`;
  const secretAccessKey = options.credentials?.secretAccessKey ?? randomBytes(20).toString("hex");
  const version = (await promisify(execFile)(options.minio, ["--version"])).stdout.split("\n")[0]!.trim();
  const minio = startProcess(
    "minio",
    options.minio,
    ["server", dataDir, "--address", `127.0.0.1:${port}`, "--console-address", `127.0.0.1:${consolePort}`, "--quiet"],
    {
      logFile: path.join(options.dir, "logs", "minio.log"),
      env: {
        ...process.env,
        MINIO_ROOT_USER: accessKeyId,
        MINIO_ROOT_PASSWORD: secretAccessKey,
        MINIO_BROWSER: "off",
        MINIO_UPDATE: "off",
        MINIO_CI_CD: "1",
      },
    },
  );
  const endpoint = `http://127.0.0.1:${port}`;
  try {
    await waitFor("MinIO", async () => (await fetch(`${endpoint}/minio/health/ready`)).ok, { timeoutMs: 60_000, process: minio });
  } catch (error) {
    await minio.stop();
    throw error;
  }
  return { endpoint, version, accessKeyId, secretAccessKey, region: "us-east-1", process: minio, stop: () => minio.stop() };
}
