import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { OPERATOR_NODE_FLAGS } from "../bin/operator-launch.mjs";

// No container engine runs the tests, so the Dockerfile is checked as text: its stages, what each
// final image inherits, and that the sources it copies are all that the CLI imports.

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

interface Stage {
  name: string;
  /** The image or stage it starts FROM, with build arguments substituted. */
  base: string;
  instructions: { keyword: string; args: string }[];
}

/** The Dockerfile's stages, in order; continuation lines joined, comments dropped. */
function parseDockerfile(text: string): Stage[] {
  const lines = text.replace(/\\\n/g, " ").split("\n").map((line) => line.trim());
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of lines) {
    if (line === "" || line.startsWith("#")) continue;
    const [, keyword = "", rest = ""] = line.match(/^(\S+)\s*(.*)$/) ?? [];
    const upper = keyword.toUpperCase();
    if (upper === "ARG" && stages.length === 0) {
      const equals = rest.indexOf("=");
      if (equals > 0) args.set(rest.slice(0, equals), rest.slice(equals + 1));
    } else if (upper === "FROM") {
      const [image = "", , name] = rest.split(/\s+/);
      const base = image.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, braced: string, bare: string) => args.get(braced ?? bare) ?? "");
      stages.push({ name: name ?? `stage-${stages.length}`, base, instructions: [] });
    } else {
      stages.at(-1)?.instructions.push({ keyword: upper, args: rest });
    }
  }
  return stages;
}

const stages = parseDockerfile(readFileSync(path.join(root, "Dockerfile"), "utf8"));
const stage = (name: string) => {
  const found = stages.find((candidate) => candidate.name === name);
  if (!found) throw new Error(`the Dockerfile has no stage "${name}"`);
  return found;
};

/** A stage and the stages it is built FROM, the stage itself first. */
function lineage(name: string): Stage[] {
  const chain = [stage(name)];
  for (let base = chain[0]!.base; stages.some((candidate) => candidate.name === base); base = chain.at(-1)!.base) chain.push(stage(base));
  return chain;
}

/** The value an instruction (USER, ENV name) has in a final image: the nearest one up its lineage. */
function effectiveUser(name: string): string | undefined {
  for (const current of lineage(name)) {
    const user = current.instructions.findLast((instruction) => instruction.keyword === "USER");
    if (user) return user.args;
  }
  return undefined;
}

function effectiveEnv(name: string): Map<string, string> {
  const env = new Map<string, string>();
  for (const current of lineage(name).reverse()) {
    for (const instruction of current.instructions.filter((candidate) => candidate.keyword === "ENV")) {
      for (const [, key = "", value = ""] of instruction.args.matchAll(/(\w+)=(\S+)/g)) env.set(key, value);
    }
  }
  return env;
}

/** The ENTRYPOINT a final image has, as its JSON array. */
function effectiveEntrypoint(name: string): string[] {
  for (const current of lineage(name)) {
    const entrypoint = current.instructions.findLast((instruction) => instruction.keyword === "ENTRYPOINT");
    if (entrypoint) return JSON.parse(entrypoint.args) as string[];
  }
  return [];
}

/** The stage a final image's node_modules comes from. */
function nodeModulesSource(name: string): Stage {
  const copy = lineage(name)
    .flatMap((current) => current.instructions)
    .find((instruction) => instruction.keyword === "COPY" && /\/node_modules\b/.test(instruction.args));
  const from = copy?.args.match(/--from=(\S+)/)?.[1];
  if (!from) throw new Error(`${name} copies no node_modules from a builder stage`);
  return stage(from);
}

const FINAL_TARGETS = ["operator", "trainer-cpu", "trainer-gpu"];
const TOOLCHAIN = /\b(g\+\+|gcc|clang|make|build-essential|python3?(-pip)?|pip3?|node-gyp)\b/;

describe("the Dockerfile", () => {
  it("has the three targets: operator, trainer-cpu and trainer-gpu", () => {
    expect(stages.map((candidate) => candidate.name)).toEqual(expect.arrayContaining(FINAL_TARGETS));
  });

  it("builds every image on pinned bases: an exact release or a digest, never a floating tag", () => {
    const external = stages.map((candidate) => candidate.base).filter((base) => !stages.some((candidate) => candidate.name === base) && base !== "scratch");
    expect(external.length).toBeGreaterThan(0);
    for (const base of external) expect(base).toMatch(/^[\w./-]+(:[\w.-]*\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})$/);
  });

  it.each(FINAL_TARGETS)("runs %s as a non-root numeric user, with HOME and TMPDIR on the /scratch volume", (target) => {
    expect(effectiveUser(target)).toMatch(/^[1-9]\d*(:[1-9]\d*)?$/);
    expect(effectiveEnv(target).get("HOME")).toBe("/scratch");
    expect(effectiveEnv(target).get("TMPDIR")).toBe("/scratch");
  });

  it.each(FINAL_TARGETS)("installs no compiler, pip or package manager run into %s", (target) => {
    for (const current of lineage(target)) {
      for (const run of current.instructions.filter((instruction) => instruction.keyword === "RUN")) {
        expect(run.args, `${current.name}: RUN ${run.args}`).not.toMatch(/apt-get|apt |apk |dnf |yum |pip /);
        expect(run.args, `${current.name}: RUN ${run.args}`).not.toMatch(TOOLCHAIN);
      }
    }
  });

  it("builds the native backend with scripts/native.sh --copy, the GPU build for trainer-gpu only", () => {
    const nativeRun = (target: string) =>
      lineage(nodeModulesSource(target).name)
        .flatMap((current) => current.instructions)
        .find((instruction) => instruction.keyword === "RUN" && instruction.args.includes("scripts/native.sh"))?.args;
    expect(nativeRun("trainer-cpu")).toMatch(/scripts\/native\.sh --copy$/);
    expect(nativeRun("trainer-gpu")).toMatch(/scripts\/native\.sh (--gpu --copy|--copy --gpu)$/);
    expect(nativeRun("operator")).toBeUndefined();
  });

  it.each(FINAL_TARGETS)("installs the production dependencies only into %s", (target) => {
    const npmRuns = lineage(nodeModulesSource(target).name)
      .flatMap((current) => current.instructions)
      .filter((instruction) => instruction.keyword === "RUN" && /\bnpm (ci|install|uninstall)\b/.test(instruction.args));
    expect(npmRuns.length).toBeGreaterThan(0);
    for (const run of npmRuns) expect(run.args).toMatch(/--omit=dev\b/);
  });

  it("leaves TensorFlow out of the operator image", () => {
    const source = lineage(nodeModulesSource("operator").name).flatMap((current) => current.instructions);
    expect(source.some((instruction) => instruction.keyword === "RUN" && /npm uninstall --no-save .*@tensorflow\/tfjs-node\b/.test(instruction.args))).toBe(true);
  });

  it("bases trainer-gpu on the same Node image as the others, not a CUDA one, and asks the NVIDIA runtime for compute", () => {
    const baseOf = (target: string) => lineage(target).at(-1)!.base;
    expect(baseOf("trainer-gpu")).toBe(baseOf("operator"));
    expect(baseOf("trainer-gpu")).not.toMatch(/cuda/i);
    expect(effectiveEnv("trainer-gpu").get("NVIDIA_DRIVER_CAPABILITIES")?.split(",")).toContain("compute");
  });

  it("ships the operator as dist/operator.mjs, bundled from the sources and locked dependencies the image has, run with a small young generation and slow heap growth", () => {
    const copy = stage("operator").instructions.find((instruction) => instruction.keyword === "COPY" && /\/app\/dist\b/.test(instruction.args));
    expect(copy?.args).toMatch(/\/app\/dist \.\/dist$/);
    const builder = lineage(copy!.args.match(/--from=(\S+)/)![1]!).flatMap((current) => current.instructions);
    expect(builder.some((instruction) => instruction.keyword === "RUN" && /^node scripts\/build-operator\.mjs$/.test(instruction.args))).toBe(true);
    expect(builder.some((instruction) => instruction.keyword === "COPY" && /^--from=sources \/app \.\/$/.test(instruction.args))).toBe(true);
    expect(builder.some((instruction) => instruction.keyword === "RUN" && /\bnpm ci\b/.test(instruction.args))).toBe(true);
    // The flags are bin/operator-launch.mjs's, which the benchmark runs the operator with too.
    expect(effectiveEntrypoint("operator")).toEqual(["node", ...OPERATOR_NODE_FLAGS, "/app/bin/kubetune.mjs"]);
    expect(OPERATOR_NODE_FLAGS).toEqual(["--max-semi-space-size=1", "--optimize-for-size"]);
    // The trainers keep V8's default heap sizing: they allocate far faster than the operator, and their memory is tensors.
    for (const trainer of ["trainer-cpu", "trainer-gpu"]) expect(effectiveEntrypoint(trainer)).toEqual(["node", "/app/bin/kubetune.mjs"]);
  });

  it("copies every folder the CLI imports, and package.json, into the images", () => {
    const copied = stage("sources")
      .instructions.filter((instruction) => instruction.keyword === "COPY" && !instruction.args.includes("--from"))
      .map((instruction) => instruction.args.split(/\s+/)[0]);
    const ignored = readFileSync(path.join(root, ".dockerignore"), "utf8").split("\n").map((line) => line.trim());
    const needed = new Set(["package.json", ...importedTopLevelFolders(path.join(root, "bin/kubetune.mjs"))]);
    for (const entry of needed) {
      expect(copied, `the sources stage must COPY ${entry}`).toContain(entry);
      expect(ignored, `.dockerignore must not exclude ${entry}`).not.toContain(entry);
    }
    expect(ignored).toContain("node_modules");
  });
});

/** The repository's top-level folders that a module reaches through relative, non-type imports. */
function importedTopLevelFolders(entry: string): Set<string> {
  const seen = new Set<string>();
  const pending = [entry];
  while (pending.length) {
    const file = pending.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const source = readFileSync(file, "utf8");
    const specifiers = [
      ...source.matchAll(/^\s*(?:import|export)\s+(?!type\b)[^;]*?\bfrom\s+"(\.[^"]+)"/gm),
      ...source.matchAll(/^\s*import\s+"(\.[^"]+)"/gm),
      ...source.matchAll(/\bimport\(\s*"(\.[^"]+)"\s*\)/g),
    ].map((match) => match[1]!);
    for (const specifier of specifiers) pending.push(path.resolve(path.dirname(file), specifier));
  }
  return new Set([...seen].map((file) => path.relative(root, file).split(path.sep)[0]!));
}
