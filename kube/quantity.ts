const binarySuffix: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const decimalSuffix: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/**
 * The value of a Kubernetes resource quantity ("500m", "2", "1.5Gi", "1e3") as a number of
 * base units (cores, bytes, devices). Throws on malformed input.
 */
export function parseQuantity(quantity: string | number): number {
  if (typeof quantity === "number") return quantity;
  const match = /^([+-]?[0-9.]+)([eE][+-]?[0-9]+)?([a-zA-Z]*)$/.exec(quantity.trim());
  if (!match) throw new Error(`"${quantity}" is not a Kubernetes quantity`);
  const [, number, exponent, suffix = ""] = match;
  const value = Number(number) * (exponent ? 10 ** Number(exponent.slice(1)) : 1);
  const scale = binarySuffix[suffix] ?? decimalSuffix[suffix];
  if (scale === undefined || Number.isNaN(value)) throw new Error(`"${quantity}" is not a Kubernetes quantity`);
  return value * scale;
}
