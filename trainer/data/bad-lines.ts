/** A dataset line that cannot be used: the file's URI, the 1-based line number, and what is wrong. */
export interface BadLine {
  file: string;
  line: number;
  problem: string;
}

/** "file:line: problem", the form every report of a bad line takes. */
export function formatBadLine(badLine: BadLine): string {
  return `${badLine.file}:${badLine.line}: ${badLine.problem}`;
}

/**
 * A dataset that cannot be trained on. `reason` is the job condition's reason; `badLines`
 * holds the first few bad lines, when bad lines are the cause.
 */
export class DatasetError extends Error {
  readonly reason = "InvalidDataset";

  constructor(
    message: string,
    readonly badLines: readonly BadLine[] = [],
  ) {
    super(message);
    this.name = "DatasetError";
  }
}

export interface BadLinePolicy {
  badLines: "fail" | "skip";
  maxBadLines: number;
  maxBadFraction: number;
}

/** Lines read before the bad-line fraction is checked mid-pass, so that one early bad line does not count as 100%. */
const FRACTION_CHECK_AFTER_LINES = 1000;
/** Bad lines kept for the error message. */
const KEPT_BAD_LINES = 10;

/**
 * Applies the bad-line policy to one pass over the data: "fail" throws at the first bad line;
 * "skip" counts them and throws once there are more than maxBadLines, or more than
 * maxBadFraction of the lines read (checked from 1,000 lines on and at the end of the pass).
 */
export class BadLineCounter {
  lines = 0;
  bad = 0;
  private readonly kept: BadLine[] = [];

  constructor(
    private readonly policy: BadLinePolicy,
    private readonly what: string,
    private readonly onBadLine: ((badLine: BadLine) => void) | undefined,
  ) {}

  /** Counts a line that was read (good or bad). */
  read(): void {
    this.lines++;
  }

  report(badLine: BadLine): void {
    if (this.policy.badLines === "fail") {
      throw new DatasetError(`${formatBadLine(badLine)} (badLines is "fail"; fix the line, or set badLines "skip" to skip bad lines)`, [badLine]);
    }
    this.bad++;
    if (this.kept.length < KEPT_BAD_LINES) this.kept.push(badLine);
    this.onBadLine?.(badLine);
    if (this.bad > this.policy.maxBadLines) this.fail(`more than maxBadLines (${this.policy.maxBadLines})`);
    if (this.lines >= FRACTION_CHECK_AFTER_LINES) this.checkFraction();
  }

  /** At the end of the pass. */
  finish(): void {
    if (this.lines > 0) this.checkFraction();
  }

  private checkFraction(): void {
    if (this.bad / this.lines > this.policy.maxBadFraction) this.fail(`more than maxBadFraction (${this.policy.maxBadFraction})`);
  }

  private fail(limit: string): never {
    const share = ((100 * this.bad) / this.lines).toFixed(1);
    const first = this.kept.map((badLine) => `\n  ${formatBadLine(badLine)}`).join("");
    throw new DatasetError(
      `too many bad lines in the ${this.what}: ${this.bad} of ${this.lines} lines read (${share}%), ${limit}; the first:${first}`,
      this.kept,
    );
  }
}
