// The part of fengari (a Lua 5.3 VM in JavaScript) that the Argo CD health check test uses.
declare module "fengari" {
  type LuaState = object;
  const fengari: {
    lua: {
      lua_pcall(L: LuaState, nargs: number, nresults: number, errfunc: number): number;
      lua_tojsstring(L: LuaState, index: number): string;
      lua_getfield(L: LuaState, index: number, key: Uint8Array): number;
      lua_type(L: LuaState, index: number): number;
      lua_settop(L: LuaState, index: number): void;
      LUA_OK: number;
      LUA_TTABLE: number;
    };
    lauxlib: {
      luaL_newstate(): LuaState;
      luaL_loadstring(L: LuaState, source: Uint8Array): number;
    };
    lualib: { luaL_openlibs(L: LuaState): void };
    to_luastring(text: string): Uint8Array;
  };
  export default fengari;
}
