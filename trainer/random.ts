/**
 * A small seedable pseudo-random generator (xoshiro128**, seeded through splitmix32) for every
 * random choice the trainer makes: adapter initialisation, dropout masks, data order.
 * Its whole state is four 32-bit words, so a checkpoint stores it and a resumed run continues
 * the exact same sequence. Math.random is never used in training code.
 */
export class Rng {
  private constructor(
    private s0: number,
    private s1: number,
    private s2: number,
    private s3: number,
  ) {}

  /** A generator whose sequence is fixed by `seed` (any finite number; its low 32 bits count). */
  static fromSeed(seed: number): Rng {
    if (!Number.isFinite(seed)) throw new Error(`random seed must be a finite number, got ${seed}`);
    let x = seed >>> 0;
    const state = new Uint32Array(4);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      state[i] = (z ^ (z >>> 16)) >>> 0;
    }
    // xoshiro's only bad state is all zeros; splitmix32 output makes it practically impossible.
    if (state.every((word) => word === 0)) state[0] = 1;
    return Rng.fromState(Array.from(state));
  }

  /** Restores a generator from `state()`. */
  static fromState(state: readonly number[]): Rng {
    if (state.length !== 4 || state.some((word) => !Number.isInteger(word) || word < 0 || word > 0xffffffff)) {
      throw new Error(`random state must be four unsigned 32-bit integers, got ${JSON.stringify(state)}`);
    }
    if (state.every((word) => word === 0)) throw new Error("random state must not be all zeros");
    const [s0, s1, s2, s3] = state as [number, number, number, number];
    return new Rng(s0, s1, s2, s3);
  }

  /** The generator's state, four unsigned 32-bit integers, for checkpoints. */
  state(): number[] {
    return [this.s0, this.s1, this.s2, this.s3];
  }

  /** Continues from a saved state (as `state()` returned it), e.g. after resuming a checkpoint. */
  setState(state: readonly number[]): void {
    const restored = Rng.fromState(state);
    [this.s0, this.s1, this.s2, this.s3] = [restored.s0, restored.s1, restored.s2, restored.s3];
  }

  /** An independent copy that continues from the same point. */
  clone(): Rng {
    return new Rng(this.s0, this.s1, this.s2, this.s3);
  }

  /** The next unsigned 32-bit integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** A float in [0, 1) with 32 random bits. */
  nextFloat(): number {
    return this.nextUint32() / 4294967296;
  }

  /** A float in [low, high). */
  uniform(low: number, high: number): number {
    return low + (high - low) * this.nextFloat();
  }

  /** A standard normal sample (Box-Muller). */
  normal(): number {
    const u = 1 - this.nextFloat();
    const v = this.nextFloat();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** An integer in [0, n). */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 4294967296) throw new Error(`nextInt needs 0 < n <= 2^32, got ${n}`);
    // Rejection sampling keeps the distribution exactly uniform.
    const limit = 4294967296 - (4294967296 % n);
    for (;;) {
      const value = this.nextUint32();
      if (value < limit) return value % n;
    }
  }

  /** Fills `out` with uniform floats in [low, high), each rounded to float32. */
  fillUniform(out: Float32Array, low: number, high: number): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.uniform(low, high);
    return out;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
