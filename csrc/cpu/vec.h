// Portable SIMD on GCC/Clang vector extensions. Included once per instruction set inside that
// set's namespace (see kernels_*.cpp) with ATTN_CPU_VEC_BYTES = 16 (SSE2 / NEON baseline),
// 32 (AVX2 + FMA) or 64 (AVX-512); the compiler maps `a * b + c` to FMA where the target has
// it (the build passes -ffp-contract=fast). No intrinsics, so aarch64 builds the same code.

constexpr int W = ATTN_CPU_VEC_BYTES / 4;  // fp32 lanes per vector
typedef float vf __attribute__((vector_size(ATTN_CPU_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(ATTN_CPU_VEC_BYTES)));

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -__builtin_inff();

// A broadcast. Written as x * 1 because x * 1 folds to a plain broadcast; `vf{} + x` leaves a
// scalar add in the loop (x + 0 is not x for x = -0) and a lane-by-lane loop is not recognized.
static inline vf splat(float x) { return x * (vf{} + 1.f); }
static inline vf load(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
static inline void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof(v)); }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline vf iota(float start) {
  vf v;
  for (int i = 0; i < W; ++i) v[i] = start + float(i);
  return v;
}
// Lane permutation with constant indices: Clang's __builtin_shufflevector, GCC's
// __builtin_shuffle (GCC < 12 has no __builtin_shufflevector).
#if defined(__clang__)
#define ATTN_PERMUTE(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define ATTN_PERMUTE(v, ...) __builtin_shuffle(v, vi{__VA_ARGS__})
#endif

// Horizontal sum by an XOR butterfly (log2(W) permute + add steps; afterwards every lane holds
// the sum), not lane by lane.
static inline float hsum(vf v) {
#if ATTN_CPU_VEC_BYTES == 64
  v += ATTN_PERMUTE(v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += ATTN_PERMUTE(v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += ATTN_PERMUTE(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += ATTN_PERMUTE(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
#elif ATTN_CPU_VEC_BYTES == 32
  v += ATTN_PERMUTE(v, 4, 5, 6, 7, 0, 1, 2, 3);
  v += ATTN_PERMUTE(v, 2, 3, 0, 1, 6, 7, 4, 5);
  v += ATTN_PERMUTE(v, 1, 0, 3, 2, 5, 4, 7, 6);
#else
  v += ATTN_PERMUTE(v, 2, 3, 0, 1);
  v += ATTN_PERMUTE(v, 1, 0, 3, 2);
#endif
  return v[0];
}
static inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// 2^x per lane; exact 0 for x < -126 (so -inf, masked scores, give 0), relative error ~2e-7.
// Range reduction x = n + f, |f| <= 1/2, then Cephes' exp2f minimax polynomial for 2^f.
static inline vf exp2v(vf x) {
  const vf lo = splat(-126.f);
  const vi dead = x < lo;
  x = dead ? lo : x;
  x = x > splat(127.f) ? splat(127.f) : x;
  const vf round_magic = splat(0x1.8p23f);  // adding it rounds to an integer in the low bits
  const vf t = x + round_magic;
  const vf n = t - round_magic;
  const vf f = x - n;
  const vi ni = (vi)t - 0x4b400000;  // the integer n, from t's bit pattern
  vf p = splat(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  const vf scale = (vf)((ni + 127) << 23);
  return dead ? splat(0.f) : p * scale;
}

// Softmax probabilities e^(s - m) = 2^((s - m) log2 e) for scores s and a finite row max m
// (natural units; the max is subtracted first, so no finite s overflows). A hidden key
// (s = -inf) gets -0 instead of +0, so that P V can tell it from a probability that underflowed
// (is_hidden), docs/design.md §3.
static inline vf softmax_probs(vf s, vf m) {
  const vf p = exp2v((s - m) * kLog2e);
  return s == splat(kNegInf) ? splat(-0.f) : p;
}
static inline vi is_hidden(vf p) { return (vi)p == (vi)splat(-0.f); }

// tanh(x) = sign(x) (1 - e) / (1 + e), e = 2^(-2 log2(e) |x|): no overflow for any x.
static inline vf tanhv(vf x) {
  const vf ax = x < 0 ? -x : x;
  const vf e = exp2v(ax * (-2.f * kLog2e));
  const vf t = (1.f - e) / (1.f + e);
  return x < 0 ? -t : t;
}
