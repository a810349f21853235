import { readFileSync } from "node:fs";
import path from "node:path";
import fengari from "fengari";

/**
 * Runs the Argo CD health check of docs/gitops.md in a real Lua VM (fengari, Lua 5.3), as
 * Argo CD runs it (gopher-lua): the object as the global `obj`, the script's return value `hs`.
 */

const GITOPS_DOC = path.join(import.meta.dirname, "..", "docs", "gitops.md");

/** The one ```lua block of docs/gitops.md: what users paste into argocd-cm. */
export function argoHealthScript(): string {
  const blocks = [...readFileSync(GITOPS_DOC, "utf8").matchAll(/```lua\n([\s\S]*?)```/g)];
  if (blocks.length !== 1) throw new Error(`docs/gitops.md should hold one lua block, holds ${blocks.length}`);
  return blocks[0]![1]!;
}

/** A JSON value as a Lua table constructor, as Argo CD hands a Kubernetes object to Lua. */
export function luaLiteral(value: unknown): string {
  if (value === null || value === undefined) return "nil";
  if (typeof value === "boolean") return String(value);
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(value).replace(/^(-?\d+)$/, "$1.0");
  if (typeof value === "string") return `"${[...Buffer.from(value, "utf8")].map((byte) => (byte >= 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x5c ? String.fromCharCode(byte) : `\\${byte}`)).join("")}"`;
  if (Array.isArray(value)) return `{${value.map(luaLiteral).join(", ")}}`;
  if (typeof value === "object") return `{${Object.entries(value as Record<string, unknown>).map(([key, entry]) => `[${luaLiteral(key)}] = ${luaLiteral(entry)}`).join(", ")}}`;
  throw new Error(`cannot pass ${typeof value} to Lua`);
}

export function argoHealth(object: unknown, script = argoHealthScript()): { status: string; message: string } {
  const { lua, lauxlib, lualib, to_luastring } = fengari;
  const L = lauxlib.luaL_newstate();
  lualib.luaL_openlibs(L);
  const source = `obj = ${luaLiteral(object)}\nlocal function check()\n${script}\nend\nlocal hs = check()\nreturn hs.status, hs.message`;
  if (lauxlib.luaL_loadstring(L, to_luastring(source)) !== lua.LUA_OK || lua.lua_pcall(L, 0, 2, 0) !== lua.LUA_OK) {
    throw new Error(`the health check failed in Lua: ${lua.lua_tojsstring(L, -1)}`);
  }
  return { status: lua.lua_tojsstring(L, -2), message: lua.lua_tojsstring(L, -1) };
}
