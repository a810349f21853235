import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { isNode, LineCounter, parseAllDocuments, type Document } from "yaml";
import { KIND, formatProblem, validate, type Problem } from "../../api/index.ts";

/** A problem in a file, with the line it is on when that is known. */
export interface LocatedProblem extends Problem {
  line?: number;
  column?: number;
}

/** The outcome for one document of one file. */
export interface DocumentReport {
  file: string;
  /** 1-based position of the document in its file. */
  document: number;
  /** How many documents the file holds. */
  documents: number;
  kind?: string;
  name?: string;
  valid: boolean;
  problems: LocatedProblem[];
}

export interface ValidationReport {
  valid: boolean;
  documents: DocumentReport[];
}

interface ParsedDocument {
  value?: unknown;
  syntaxErrors: LocatedProblem[];
  locate: (path: string) => { line: number; column: number } | undefined;
}

/** Validates every FineTuneJob document of every file (YAML, multi-document, or JSON; "-" is stdin). */
export async function validateFiles(files: readonly string[]): Promise<ValidationReport> {
  const documents: DocumentReport[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = file === "-" ? await readStdin() : await readFile(file, "utf8");
    } catch (error) {
      documents.push(failure(file, `cannot read the file: ${(error as Error).message}`));
      continue;
    }
    const parsed = file.endsWith(".json") ? [parseJson(text)] : parseYaml(text);
    if (parsed.length === 0) {
      documents.push(failure(file, "holds no documents"));
      continue;
    }
    parsed.forEach((document, index) => {
      const problems =
        document.syntaxErrors.length > 0
          ? document.syntaxErrors
          : validate(document.value).map((problem) => ({ ...problem, ...document.locate(problem.path) }));
      const object = isRecord(document.value) ? document.value : {};
      const metadata = isRecord(object.metadata) ? object.metadata : {};
      documents.push({
        file,
        document: index + 1,
        documents: parsed.length,
        ...(typeof object.kind === "string" ? { kind: object.kind } : {}),
        ...(typeof metadata.name === "string" ? { name: metadata.name } : {}),
        valid: problems.length === 0,
        problems,
      });
    });
  }
  return { valid: documents.every((document) => document.valid), documents };
}

/**
 * One `path: message` line per problem. With several files or documents each line starts with
 * the file (and #N, the document's position, in a multi-document file); syntax errors read
 * FILE:LINE:COLUMN: message.
 */
export function formatProblems(report: ValidationReport): string[] {
  const files = new Set(report.documents.map((document) => document.file));
  const lines: string[] = [];
  for (const document of report.documents) {
    const label = document.documents > 1 ? `${document.file}#${document.document}` : document.file;
    const prefixed = files.size > 1 || document.documents > 1;
    for (const problem of document.problems) {
      if (problem.path === "" && problem.line !== undefined) lines.push(`${document.file}:${problem.line}:${problem.column ?? 1}: ${problem.message}`);
      else lines.push(`${prefixed || problem.path === "" ? `${label}: ` : ""}${formatProblem(problem)}`);
    }
  }
  return lines;
}

export function registerValidate(program: Command): void {
  program
    .command("validate")
    .description(`Check ${KIND} manifests as the API server would; exit 0 when all are valid, 1 otherwise.`)
    .addHelpText("after", "\nExamples:\n  $ kubetune validate examples/*.yaml\n  $ kubectl get ftj my-job -o yaml | kubetune validate -")
    .argument("<files...>", "YAML (several documents allowed) or JSON files; - reads standard input")
    .option("--json", "print one JSON object: {valid, documents: [{file, document, kind, name, valid, problems: [{path, message, line}]}]}")
    .action(async (files: string[], options: { json?: boolean }) => {
      const report = await validateFiles(files);
      if (options.json) {
        console.log(JSON.stringify(report, null, 2));
      } else {
        for (const line of formatProblems(report)) console.log(line);
        const invalid = report.documents.filter((document) => !document.valid).length;
        console.error(
          invalid === 0
            ? `${report.documents.length} ${plural(report.documents.length, "document")} valid`
            : `${invalid} of ${report.documents.length} ${plural(report.documents.length, "document")} invalid`,
        );
      }
      process.exitCode = report.valid ? 0 : 1;
    });
}

function parseYaml(text: string): ParsedDocument[] {
  const lineCounter = new LineCounter();
  const documents = parseAllDocuments(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  if (!Array.isArray(documents)) return [];
  return (
    documents
      .map((document): ParsedDocument => {
        const syntaxErrors = document.errors.map((error) => {
          const position = lineCounter.linePos(error.pos[0]);
          return { path: "", message: error.message.split("\n")[0]!, line: position.line, column: position.col };
        });
        return {
          syntaxErrors,
          value: syntaxErrors.length === 0 ? document.toJS({ maxAliasCount: 100 }) : undefined,
          locate: (path: string) => locate(document, lineCounter, path),
        };
      })
      // An empty document, such as the one after a trailing ---, holds no manifest.
      .filter((document) => document.syntaxErrors.length > 0 || (document.value !== null && document.value !== undefined))
  );
}

function parseJson(text: string): ParsedDocument {
  try {
    return { value: JSON.parse(text), syntaxErrors: [], locate: () => undefined };
  } catch (error) {
    const message = (error as Error).message;
    const offset = /at position (\d+)/.exec(message)?.[1];
    const position = offset === undefined ? undefined : positionOf(text, Number(offset));
    return { syntaxErrors: [{ path: "", message: `invalid JSON: ${message}`, line: position?.line ?? 1, column: position?.column ?? 1 }], locate: () => undefined };
  }
}

function positionOf(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset).split("\n");
  return { line: before.length, column: before[before.length - 1]!.length + 1 };
}

/** The line of the node at path, or of its nearest ancestor present in the document. */
function locate(document: Document, lineCounter: LineCounter, path: string): { line: number; column: number } | undefined {
  const segments = [...path.matchAll(/([^.[\]]+)|\[([^\]]*)\]/g)].map((match) =>
    match[2] !== undefined ? (/^\d+$/.test(match[2]) ? Number(match[2]) : match[2]) : match[1]!,
  );
  for (let length = segments.length; length >= 0; length--) {
    const node = document.getIn(segments.slice(0, length), true);
    if (isNode(node) && node.range) {
      const position = lineCounter.linePos(node.range[0]);
      return { line: position.line, column: position.col };
    }
  }
  return undefined;
}

function failure(file: string, message: string): DocumentReport {
  return { file, document: 1, documents: 1, valid: false, problems: [{ path: "", message }] };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function plural(count: number, noun: string): string {
  return count === 1 ? noun : `${noun}s`;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
