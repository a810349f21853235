import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import net from "node:net";

/** A server process the local cluster started, with its log file and a clean stop. */
export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** Resolves with the exit code (or signal) once the process has exited. */
  readonly exited: Promise<number | NodeJS.Signals>;
  /** SIGTERM to the process group, then SIGKILL after graceMs; resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/** Process groups started here and not yet stopped; killed if this process exits first. */
const running = new Set<number>();
let exitHookInstalled = false;

function killOnExit(pid: number): void {
  running.add(pid);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Servers run in their own process groups (so a stop reaches what they fork), which also
  // means they would outlive us: end them when this process exits, however it exits normally.
  process.once("exit", () => {
    for (const group of running) signalGroup(group, "SIGKILL");
  });
}

/**
 * Starts a server in its own process group (so stop() also ends anything it forked), with
 * stdout and stderr appended to logFile.
 */
export function startProcess(
  name: string,
  command: string,
  args: string[],
  options: { logFile: string; env?: NodeJS.ProcessEnv; cwd?: string },
): ManagedProcess {
  const log = createWriteStream(options.logFile, { flags: "a" });
  const child: ChildProcess = spawn(command, args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  const exited = new Promise<number | NodeJS.Signals>((resolve, reject) => {
    child.once("error", (error) => reject(new Error(`${name}: cannot start ${command}: ${error.message}`)));
    child.once("exit", (code, signal) => {
      log.end();
      resolve(code ?? signal ?? 0);
    });
  });
  // A failed start rejects `exited`; callers see it through waitFor, so no unhandled rejection here.
  exited.catch(() => undefined);
  if (child.pid === undefined) throw new Error(`${name}: cannot start ${command}`);
  const pid = child.pid;
  killOnExit(pid);
  void exited.finally(() => running.delete(pid));
  let stopping: Promise<void> | undefined;
  return {
    name,
    pid,
    logFile: options.logFile,
    exited,
    stop(graceMs = 5000) {
      stopping ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        signalGroup(pid, "SIGTERM");
        const killed = setTimeout(() => signalGroup(pid, "SIGKILL"), graceMs);
        await exited.catch(() => undefined);
        clearTimeout(killed);
        // Anything the server forked into its group goes too.
        signalGroup(pid, "SIGKILL");
      })();
      return stopping;
    },
  };
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // Already gone.
  }
}

/** A port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** Throws a clear error if something already listens on the port. */
export async function assertPortFree(port: number, what: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const server = net.createServer();
    server.once("error", (error: NodeJS.ErrnoException) =>
      reject(
        new Error(
          error.code === "EADDRINUSE"
            ? `port 127.0.0.1:${port} for ${what} is already in use; stop whatever listens there (\`ss -ltnp 'sport = :${port}'\`) or choose another port`
            : `cannot bind 127.0.0.1:${port} for ${what}: ${error.message}`,
        ),
      ),
    );
    server.listen(port, "127.0.0.1", () => server.close(() => resolve()));
  });
}

/** True while something accepts TCP connections on 127.0.0.1:port. */
export async function isPortOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/**
 * Polls check() until it returns true, failing early if the process exits and with a clear
 * message (and the log's tail) after timeoutMs.
 */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  options: { timeoutMs: number; process?: ManagedProcess; intervalMs?: number },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let exitCode: number | NodeJS.Signals | undefined;
  options.process?.exited.then((code) => (exitCode = code)).catch(() => (exitCode = "start failed"  as NodeJS.Signals));
  while (Date.now() < deadline) {
    if (exitCode !== undefined) {
      throw new Error(`${what}: the process exited (${exitCode}) before it was ready; see ${options.process?.logFile}`);
    }
    if (await check().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 200));
  }
  throw new Error(`${what}: not ready after ${options.timeoutMs / 1000}s${options.process ? `; see ${options.process.logFile}` : ""}`);
}

/** True while a process with this id exists. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
