import { describe, expect, it } from "vitest";
import { lossPlotSvg } from "./loss-plot.ts";

describe("lossPlotSvg", () => {
  const train = Array.from({ length: 50 }, (_, step) => ({ step: step + 1, loss: 4 * Math.exp(-step / 15) + 0.5 }));

  it("draws the training curve left to right, falling as the loss falls", () => {
    const svg = lossPlotSvg(train, [{ step: 25, loss: 1.2 }]);
    const points = /<polyline points="([^"]+)"/.exec(svg)![1]!.split(" ").map((pair) => pair.split(",").map(Number));
    expect(points).toHaveLength(50);
    expect(points[0]![0]).toBeLessThan(points[49]![0]!);
    // SVG y grows downwards: a falling loss is a rising y.
    expect(points[0]![1]).toBeLessThan(points[49]![1]!);
    expect(svg).toContain("<circle");
    expect(svg).toContain("eval loss");
  });

  it("copes with a single point and with no points", () => {
    expect(lossPlotSvg([{ step: 1, loss: 2 }])).toContain("<polyline");
    expect(lossPlotSvg([])).toContain("</svg>");
    expect(lossPlotSvg([{ step: 1, loss: 2 }])).not.toContain("NaN");
    expect(lossPlotSvg([])).not.toContain("NaN");
  });
});
