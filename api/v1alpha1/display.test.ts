import { describe, expect, it } from "vitest";
import { appendLossPoint, formatDuration, formatLoss, formatPercent, type LossPoint } from "./display.ts";

describe("the strings kubectl get ftj shows", () => {
  it("gives the loss to 4 significant digits", () => {
    expect(formatLoss(0.42254677414894104)).toBe("0.4225");
    expect(formatLoss(12.345678)).toBe("12.35");
    expect(formatLoss(2)).toBe("2.000");
    expect(formatLoss(0.000123456)).toBe("0.0001235");
  });

  it("gives progress in whole percent, rounded down so that 100% means done", () => {
    expect(formatPercent(50)).toBe("50%");
    expect(formatPercent(99.9)).toBe("99%");
    expect(formatPercent(100)).toBe("100%");
    expect(formatPercent(0)).toBe("0%");
  });

  it("gives the ETA as hours and minutes, minutes and seconds, or seconds", () => {
    expect(formatDuration(73)).toBe("1m13s");
    expect(formatDuration(4320)).toBe("1h12m");
    expect(formatDuration(42.4)).toBe("42s");
    expect(formatDuration(-3)).toBe("0s");
  });
});

describe("appendLossPoint", () => {
  it("appends points with the loss rounded to 4 significant digits", () => {
    expect(appendLossPoint(undefined, { step: 10, loss: 2.123456 })).toEqual([{ step: 10, loss: 2.123 }]);
    expect(appendLossPoint([{ step: 10, loss: 2.1 }], { step: 20, loss: 1.5 })).toEqual([
      { step: 10, loss: 2.1 },
      { step: 20, loss: 1.5 },
    ]);
  });

  it("drops the points an attempt resumed from an earlier checkpoint will redo", () => {
    const history = [10, 20, 30, 40].map((step) => ({ step, loss: 1 }));
    expect(appendLossPoint(history, { step: 30, loss: 0.5 }).map((point) => point.step)).toEqual([10, 20, 30]);
  });

  it("keeps one point, the newest, for each of 32 equal spans of the run", () => {
    let history: LossPoint[] = [];
    for (let step = 1; step <= 1000; step++) history = appendLossPoint(history, { step, loss: 1000 / step }, 1000);
    expect(history).toHaveLength(32);
    expect(history.slice(0, 3).map((point) => point.step)).toEqual([32, 64, 96]);
    expect(history.at(-1)).toEqual({ step: 1000, loss: 1 });
    expect(history.at(-2)).toEqual({ step: 992, loss: 1.008 });
  });

  it("without totalSteps keeps the newest points", () => {
    let history: LossPoint[] = [];
    for (let step = 1; step <= 40; step++) history = appendLossPoint(history, { step, loss: 1 });
    expect(history.map((point) => point.step)).toEqual(Array.from({ length: 32 }, (_, index) => index + 9));
  });
});
