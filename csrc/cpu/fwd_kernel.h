// Fused attention forward on CPU (included per instruction set after vec.h and tiles.h).
//
// One work item = (batch b, head h, query tile of BLOCK_M rows). Per key tile of BLOCK_N keys:
//   S^T = K_tile Q^T                  (BLOCK_N x BLOCK_M, natural units: Q is pre-scaled)
//   S^T = softcap / ALiBi / bias / visibility mask           (only the options in use)
//   m' = max(m, colmax S^T); P^T = 2^((S^T - m') log2 e); l = l 2^((m - m') log2 e) + colsum P^T
//   O^T = O^T 2^((m - m') log2 e) + V_tile^T P^T              (D x BLOCK_M)
// then out = O / l, lse = m + ln l. The max is subtracted before the log2(e) factor, so finite
// scores as low as -FLT_MAX (finfo.min masks) never overflow to -inf (docs/design.md §3). Key
// tiles outside the causal/local window of the query tile are never visited; the mask runs only
// on tiles that straddle a window edge.

namespace fwd {

// S^T[r][i] = q_i . k_r for MR keys and one block of VECS_PER_BLOCK * W queries.
// st: row stride BLOCK_M; qt: Q^T (D x BLOCK_M); k: MR key rows, stride k_row_stride.
template <int MR>
static inline void scores_block(float* st, const float* qt, const float* k, int64_t k_row_stride, int64_t head_dim) {
  vf acc[MR][VECS_PER_BLOCK];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < VECS_PER_BLOCK; ++c) acc[r][c] = splat(0.f);
  for (int64_t d = 0; d < head_dim; ++d) {
    vf q[VECS_PER_BLOCK];
#pragma GCC unroll 8
    for (int c = 0; c < VECS_PER_BLOCK; ++c) q[c] = load(qt + d * BLOCK_M + c * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vf kb = splat(k[r * k_row_stride + d]);
#pragma GCC unroll 8
      for (int c = 0; c < VECS_PER_BLOCK; ++c) acc[r][c] += kb * q[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < VECS_PER_BLOCK; ++c) store(st + r * BLOCK_M + c * W, acc[r][c]);
}

// S^T (n x BLOCK_M) = K[0:n] Q^T.
static void tile_scores(float* st, const float* qt, const float* k, int64_t k_row_stride, int n, int64_t head_dim) {
  for (int ib = 0; ib < BLOCK_M; ib += VECS_PER_BLOCK * W) {
    int j = 0;
    for (; j + MICRO_ROWS <= n; j += MICRO_ROWS)
      scores_block<MICRO_ROWS>(st + j * BLOCK_M + ib, qt + ib, k + j * k_row_stride, k_row_stride, head_dim);
    for (; j < n; ++j) scores_block<1>(st + j * BLOCK_M + ib, qt + ib, k + j * k_row_stride, k_row_stride, head_dim);
  }
}

// O^T[d0 + r][i] = O^T[d0 + r][i] alpha[i] + sum_j V[j][d0 + r] P^T[j][i], MR feature rows,
// one query block. ot, pt: row stride BLOCK_M; v: key rows starting at feature d0. kHidden:
// keys hidden from a query (P^T = -0, see online_softmax_update) add nothing to it, even where
// their V is NaN or Inf (docs/design.md §3); used only for tiles holding such values.
template <int MR, bool kHidden>
static inline void pv_block(float* ot, const float* pt, const float* v, int64_t v_row_stride, int n,
                            const float* alpha) {
  vf acc[MR][VECS_PER_BLOCK];
#pragma GCC unroll 8
  for (int c = 0; c < VECS_PER_BLOCK; ++c) {
    const vf a = load(alpha + c * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][c] = load(ot + r * BLOCK_M + c * W) * a;
  }
  for (int j = 0; j < n; ++j) {
    vf p[VECS_PER_BLOCK];
#pragma GCC unroll 8
    for (int c = 0; c < VECS_PER_BLOCK; ++c) p[c] = load(pt + j * BLOCK_M + c * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vf vb = splat(v[j * v_row_stride + r]);
#pragma GCC unroll 8
      for (int c = 0; c < VECS_PER_BLOCK; ++c) {
        if (kHidden)
          acc[r][c] = is_hidden(p[c]) ? acc[r][c] : acc[r][c] + vb * p[c];
        else
          acc[r][c] += vb * p[c];
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < VECS_PER_BLOCK; ++c) store(ot + r * BLOCK_M + c * W, acc[r][c]);
}

// O^T (D x BLOCK_M) = O^T diag(alpha) + V[0:n]^T P^T.
template <bool kHidden>
static void tile_accumulate(float* ot, const float* pt, const float* v, int64_t v_row_stride, int n,
                            int64_t head_dim, const float* alpha) {
  for (int ib = 0; ib < BLOCK_M; ib += VECS_PER_BLOCK * W) {
    int64_t d = 0;
    for (; d + MICRO_ROWS <= head_dim; d += MICRO_ROWS)
      pv_block<MICRO_ROWS, kHidden>(ot + d * BLOCK_M + ib, pt + ib, v + d, v_row_stride, n, alpha + ib);
    for (; d < head_dim; ++d)
      pv_block<1, kHidden>(ot + d * BLOCK_M + ib, pt + ib, v + d, v_row_stride, n, alpha + ib);
  }
}

// Whether any of V[0:n][0:head_dim] is NaN or Inf.
static bool any_nonfinite(const float* v, int64_t v_row_stride, int n, int64_t head_dim) {
  for (int j = 0; j < n; ++j)
    for (int64_t d = 0; d < head_dim; ++d)
      if (!std::isfinite(v[j * v_row_stride + d])) return true;
  return false;
}

// s = cap * tanh(s) (Q was scaled by softmax_scale / softcap).
static void apply_softcap(float* st, int n, float cap) {
  for (int64_t x = 0; x < int64_t(n) * BLOCK_M; x += W) store(st + x, cap * tanhv(load(st + x)));
}

// s -= slope |i + offset - j| for queries i0.. and keys j0..
static void apply_alibi(float* st, int n, float slope, int64_t i0, int64_t j0, int64_t offset) {
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < VECS_M; ++c) {
      const vf dist = iota(float(i0 + c * W + offset - (j0 + j)));
      float* s = st + j * BLOCK_M + c * W;
      store(s, load(s) - slope * (dist < 0 ? -dist : dist));
    }
}

// s += bias[i][j] for the `rows` real queries of the tile.
static void apply_bias(float* st, int n, int rows, const float* bias, int64_t row_stride, int64_t col_stride,
                       int64_t i0, int64_t j0) {
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < rows; ++i)
      st[j * BLOCK_M + i] += bias[(i0 + i) * row_stride + (j0 + j) * col_stride];
}

// -inf where key j is outside query i's window: visible iff
// (right < 0 or i >= j - offset - right) and (left < 0 or i <= j - offset + left).
static void apply_visibility_mask(float* st, int n, int64_t i0, int64_t j0, int64_t offset, int64_t left,
                                  int64_t right) {
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < VECS_M; ++c) {
      const vf i = iota(float(i0 + c * W));
      float* s = st + j * BLOCK_M + c * W;
      vf x = load(s);
      if (right >= 0) x = i < float(j0 + j - offset - right) ? splat(kNegInf) : x;
      if (left >= 0) x = i > float(j0 + j - offset + left) ? splat(kNegInf) : x;
      store(s, x);
    }
}

// The online-softmax step over one key tile: updates the running max m and sum l (natural
// units), turns S^T into P^T in place and returns the rescale factors e^(m_old - m_new).
// A row that has seen only -inf keeps m = -inf; it subtracts 0 instead, so no inf - inf.
// Hidden keys (score -inf) get P = -0 (softmax_probs), which tile_accumulate<true> skips.
static void online_softmax_update(float* st, int n, float* m, float* l, float* alpha) {
  for (int c = 0; c < VECS_M; ++c) {
    vf tile_max = splat(kNegInf);
    for (int j = 0; j < n; ++j) tile_max = vmax(tile_max, load(st + j * BLOCK_M + c * W));
    const vf m_old = load(m + c * W);
    const vf m_new = vmax(m_old, tile_max);
    const vf m_use = m_new == splat(kNegInf) ? splat(0.f) : m_new;
    const vf a = exp2v((m_old - m_use) * kLog2e);
    vf sum = splat(0.f);
    for (int j = 0; j < n; ++j) {
      float* s = st + j * BLOCK_M + c * W;
      const vf p = softmax_probs(load(s), m_use);
      store(s, p);
      sum += p;
    }
    store(m + c * W, m_new);
    store(l + c * W, load(l + c * W) * a + sum);
    store(alpha + c * W, a);
  }
}

struct Workspace {
  float *qt, *ot, *st, *m, *l, *alpha, *q_row;
  static int64_t floats(int64_t head_dim) { return 2 * head_dim * BLOCK_M + BLOCK_N * BLOCK_M + 3 * BLOCK_M + head_dim; }
  Workspace(float* base, int64_t head_dim)
      : qt(base),
        ot(qt + head_dim * BLOCK_M),
        st(ot + head_dim * BLOCK_M),
        m(st + BLOCK_N * BLOCK_M),
        l(m + BLOCK_M),
        alpha(l + BLOCK_M),
        q_row(alpha + BLOCK_M) {}
};

// K and V as fp32 rows: the inputs themselves, or contiguous (B, Sk, Hkv, D) fp32 copies.
struct KV {
  const float *k, *v;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
};

static void forward_tile(const FwdParams& p, const KV& kv, Workspace& w, int64_t b, int64_t h, int64_t i0) {
  const int64_t head_dim = p.head_dim;
  const int rows = int(std::min<int64_t>(BLOCK_M, p.seqlen_q - i0));
  const int64_t kv_head = h / (p.n_heads / p.n_kv_heads);
  const int64_t offset = p.diagonal_offset;
  const int64_t left = p.window_left, right = p.window_right;
  const int64_t esize = dtype_size(p.dtype);

  // Q^T (D x BLOCK_M), scaled by softmax_scale (or by scale / softcap before the tanh); padding rows 0.
  const bool softcap = p.softcap > 0.f;
  const float q_scale = softcap ? p.softmax_scale / p.softcap : p.softmax_scale;
  float* row = w.q_row;
  for (int i = 0; i < BLOCK_M; ++i) {
    if (i < rows) {
      const char* q = reinterpret_cast<const char*>(p.q) +
                      (b * p.q_batch_stride + (i0 + i) * p.q_row_stride + h * p.q_head_stride) * esize;
      load_row(row, q, p.dtype, head_dim, q_scale);
    }
    for (int64_t d = 0; d < head_dim; ++d) w.qt[d * BLOCK_M + i] = i < rows ? row[d] : 0.f;
  }
  for (int64_t x = 0; x < head_dim * BLOCK_M; ++x) w.ot[x] = 0.f;
  for (int i = 0; i < BLOCK_M; ++i) { w.m[i] = kNegInf; w.l[i] = 0.f; }

  // Keys any row of this tile can see: [key_lo, key_hi).
  const int64_t last = i0 + rows - 1;
  const int64_t key_lo = left >= 0 ? std::max<int64_t>(0, i0 + offset - left) : 0;
  const int64_t key_hi = right >= 0 ? std::min<int64_t>(p.seqlen_k, last + offset + right + 1) : p.seqlen_k;
  const float* k = kv.k + b * kv.k_batch_stride + kv_head * kv.k_head_stride;
  const float* v = kv.v + b * kv.v_batch_stride + kv_head * kv.v_head_stride;
  const float* bias = p.bias ? reinterpret_cast<const float*>(p.bias) + b * p.bias_batch_stride +
                                   h * p.bias_head_stride
                             : nullptr;
  const float slope = p.alibi_slopes ? reinterpret_cast<const float*>(p.alibi_slopes)[b * p.n_heads + h] : 0.f;
  for (int64_t j0 = key_lo; j0 < key_hi; j0 += BLOCK_N) {
    const int n = int(std::min<int64_t>(BLOCK_N, key_hi - j0));
    tile_scores(w.st, w.qt, k + j0 * kv.k_row_stride, kv.k_row_stride, n, head_dim);
    if (softcap) apply_softcap(w.st, n, p.softcap);
    if (p.alibi_slopes) apply_alibi(w.st, n, slope, i0, j0, offset);
    if (bias) apply_bias(w.st, n, rows, bias, p.bias_row_stride, p.bias_col_stride, i0, j0);
    const bool inside = (right < 0 || j0 + n - 1 <= i0 + offset + right) && (left < 0 || j0 >= last + offset - left);
    if (!inside) apply_visibility_mask(w.st, n, i0, j0, offset, left, right);
    online_softmax_update(w.st, n, w.m, w.l, w.alpha);
    const float* v_tile = v + j0 * kv.v_row_stride;
    if ((bias || !inside) && any_nonfinite(v_tile, kv.v_row_stride, n, head_dim))
      tile_accumulate<true>(w.ot, w.st, v_tile, kv.v_row_stride, n, head_dim, w.alpha);
    else
      tile_accumulate<false>(w.ot, w.st, v_tile, kv.v_row_stride, n, head_dim, w.alpha);
  }

  // out = O / l (0 for rows that saw nothing), lse = m + ln l (-inf for those rows).
  float* lse = reinterpret_cast<float*>(p.lse) + b * p.lse_batch_stride + h * p.lse_head_stride;
  for (int i = 0; i < rows; ++i) {
    const float l = w.l[i];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    void* out = reinterpret_cast<char*>(p.out) +
                (b * p.out_batch_stride + (i0 + i) * p.out_row_stride + h * p.out_head_stride) * esize;
    for (int64_t d = 0; d < head_dim; ++d) store_elem(out, d, p.dtype, w.ot[d * BLOCK_M + i] * inv);
    lse[i0 + i] = l > 0.f ? w.m[i] + std::log(l) : kNegInf;
  }
}

// Converts a 16-bit (B, S, Hkv, D) tensor to a contiguous fp32 copy, rows in parallel.
static void convert_rows(float* dst, uintptr_t src, DType dtype, int64_t batch, int64_t seqlen, int64_t heads,
                         int64_t head_dim, int64_t batch_stride, int64_t row_stride, int64_t head_stride,
                         int threads) {
  (void)threads;  // unused when built without OpenMP
  const int64_t n_rows = batch * seqlen * heads;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t b = r / (seqlen * heads), s = (r / heads) % seqlen, h = r % heads;
    const char* row = reinterpret_cast<const char*>(src) + (b * batch_stride + s * row_stride + h * head_stride) * 2;
    load_row(dst + r * head_dim, row, dtype, head_dim, 1.f);
  }
}

}  // namespace fwd

void forward(const FwdParams& p) {
  const int threads = team_size(p.num_threads);
  fwd::KV kv{reinterpret_cast<const float*>(p.k), reinterpret_cast<const float*>(p.v),
             p.k_batch_stride, p.k_row_stride, p.k_head_stride,
             p.v_batch_stride, p.v_row_stride, p.v_head_stride};
  std::unique_ptr<Floats> k32, v32;
  if (p.dtype != DType::kFloat32) {
    const int64_t n = p.batch * p.seqlen_k * p.n_kv_heads * p.head_dim;
    k32.reset(new Floats(n));
    v32.reset(new Floats(n));
    fwd::convert_rows(k32->get(), p.k, p.dtype, p.batch, p.seqlen_k, p.n_kv_heads, p.head_dim, p.k_batch_stride,
                      p.k_row_stride, p.k_head_stride, threads);
    fwd::convert_rows(v32->get(), p.v, p.dtype, p.batch, p.seqlen_k, p.n_kv_heads, p.head_dim, p.v_batch_stride,
                      p.v_row_stride, p.v_head_stride, threads);
    const int64_t row = p.n_kv_heads * p.head_dim;
    kv = fwd::KV{k32->get(), v32->get(), p.seqlen_k * row, row, p.head_dim, p.seqlen_k * row, row, p.head_dim};
  }
  const int64_t q_tiles = ceil_div(p.seqlen_q, BLOCK_M);
  const int64_t items = p.batch * p.n_heads * q_tiles;
  const int64_t per_thread = round_up(fwd::Workspace::floats(p.head_dim), 16);
  Floats scratch(per_thread * threads);
#pragma omp parallel num_threads(threads)
  {
    fwd::Workspace w(scratch.get() + thread_id() * per_thread, p.head_dim);
    // All query tiles of one head in a row, so its K and V stay in L2 between items; last
    // tiles first (under a causal mask they see the most keys).
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t tile = q_tiles - 1 - item % q_tiles;
      const int64_t bh = item / q_tiles;
      fwd::forward_tile(p, kv, w, bh / p.n_heads, bh % p.n_heads, tile * BLOCK_M);
    }
  }
}
