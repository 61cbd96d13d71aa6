// Split-KV decode (flash-decoding) on CPU (included per instruction set after vec.h, tiles.h).
//
// One work item = (batch b, split s): every kv head against the split's key range. Query rows
// are grouped by the kv head they read (row r of head kv = query position r / group, query head
// kv * group + r % group), so each K/V row is read from memory once. Walking all kv heads of a
// key tile before the next tile keeps the reads within one 64-key band of (B, S, Hkv, D) memory
// instead of one row every Hkv * D * 4 bytes. Per tile of DECODE_BLOCK_N keys and per kv head:
//   S = Q K_tile^T (R x N, natural units), masks, online softmax per row, O = O alpha + P V_tile.
// Each split writes O / l and lse (natural units) to scratch; a second pass merges the splits:
//   lse = ln sum_s e^lse_s, out = sum_s e^(lse_s - lse) O_s.

namespace dec {

// Prefetch of the rows the next step will read: row t is `k_rows[t] + k_delta` (and likewise
// for V), for t < count, `bytes` per row. The next kv head reads the same keys one head stride
// further; after the last head, the next tile's rows of head 0 are listed explicitly. Issued
// key by key inside the score loop, so the misses overlap compute instead of arriving as one
// burst per tile (single thread, B=1, Hkv=8, D=128, 8k keys fp32: ~12.5 -> ~16 GB/s).
struct NextRows {
  const float* const* k_rows;
  const float* const* v_rows;
  int64_t k_delta, v_delta, bytes;
  int count;
};

static inline void prefetch_row(const float* row, int64_t bytes) {
  const char* c = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
}

// S[r][j] = q_r . k_j for RB rows and keys j in [0, n); q rows and k rows are Dp floats (whole
// vectors). Two keys per pass share each q load: 2 * RB accumulators, RB + 2 loads per 2 * RB FMAs.
template <int RB>
static inline void dot_rows(float* s, const float* q, const float* const* k_rows, int n, int64_t dp,
                            const NextRows& next) {
  int j = 0;
  for (; j + 2 <= n; j += 2) {
    for (int t = j; t < j + 2 && t < next.count; ++t) {
      prefetch_row(next.k_rows[t] + next.k_delta, next.bytes);
      prefetch_row(next.v_rows[t] + next.v_delta, next.bytes);
    }
    vf acc0[RB], acc1[RB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) acc0[r] = acc1[r] = splat(0.f);
    const float* k0 = k_rows[j];
    const float* k1 = k_rows[j + 1];
    for (int64_t d = 0; d < dp; d += W) {
      const vf a = load(k0 + d), b = load(k1 + d);
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) {
        const vf qv = load(q + r * dp + d);
        acc0[r] += qv * a;
        acc1[r] += qv * b;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      s[r * DECODE_BLOCK_N + j] = hsum(acc0[r]);
      s[r * DECODE_BLOCK_N + j + 1] = hsum(acc1[r]);
    }
  }
  for (; j < n; ++j) {
    vf acc[RB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) acc[r] = splat(0.f);
    for (int64_t d = 0; d < dp; d += W) {
      const vf kv = load(k_rows[j] + d);
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) acc[r] += load(q + r * dp + d) * kv;
    }
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) s[r * DECODE_BLOCK_N + j] = hsum(acc[r]);
  }
}

// O[r][d:d+C*W] = O alpha_r + sum_j P[r][j] V[j][d:d+C*W] for RB rows. kHidden: keys hidden
// from a row (P = -0) add nothing to it even where V is NaN or Inf (see fwd::pv_block).
template <int RB, int C, bool kHidden>
static inline void pv_rows(float* o, const float* p, const float* alpha, const float* const* v_rows, int n,
                           int64_t d, int64_t dp) {
  vf acc[RB][C];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = load(o + r * dp + d + c * W) * alpha[r];
  for (int j = 0; j < n; ++j) {
    vf v[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) v[c] = load(v_rows[j] + d + c * W);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const vf pb = splat(p[r * DECODE_BLOCK_N + j]);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        if (kHidden)
          acc[r][c] = is_hidden(pb) ? acc[r][c] : acc[r][c] + pb * v[c];
        else
          acc[r][c] += pb * v[c];
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) store(o + r * dp + d + c * W, acc[r][c]);
}

constexpr int PV_VECS = 4;  // feature vectors per P V micro-kernel: 4 rows x 4 = 16 accumulators

template <int RB, bool kHidden>
static void pv_all(float* o, const float* p, const float* alpha, const float* const* v_rows, int n, int64_t dp) {
  int64_t d = 0;
  for (; d + PV_VECS * W <= dp; d += PV_VECS * W) pv_rows<RB, PV_VECS, kHidden>(o, p, alpha, v_rows, n, d, dp);
  for (; d < dp; d += W) pv_rows<RB, 1, kHidden>(o, p, alpha, v_rows, n, d, dp);
}

// P V for every row of one kv head (see pv_all).
template <bool kHidden>
static void pv_heads(float* o, const float* s, const float* alpha, const float* const* v_rows, int n, int64_t dp,
                     int rows) {
  int r = 0;
  for (; r + DECODE_ROWS <= rows; r += DECODE_ROWS)
    pv_all<DECODE_ROWS, kHidden>(o + r * dp, s + r * DECODE_BLOCK_N, alpha + r, v_rows, n, dp);
  for (; r < rows; ++r) pv_all<1, kHidden>(o + r * dp, s + r * DECODE_BLOCK_N, alpha + r, v_rows, n, dp);
}

// Whether any of the n value rows (head_dim floats each) holds NaN or Inf.
static bool any_nonfinite(const float* const* v_rows, int n, int64_t head_dim) {
  for (int j = 0; j < n; ++j)
    for (int64_t d = 0; d < head_dim; ++d)
      if (!std::isfinite(v_rows[j][d])) return true;
  return false;
}

// The per-row online-softmax step over one tile of S (row stride DECODE_BLOCK_N, entries
// past the tile are -inf): P replaces S (-0 for hidden keys), alpha = e^(m_old - m_new).
static void online_softmax_update(float* s, int rows, float* m, float* l, float* alpha) {
  for (int r = 0; r < rows; ++r) {
    float* row = s + r * DECODE_BLOCK_N;
    vf tile_max = splat(kNegInf);
    for (int j = 0; j < DECODE_BLOCK_N; j += W) tile_max = vmax(tile_max, load(row + j));
    const float m_new = std::max(m[r], hmax(tile_max));
    const float m_use = m_new == kNegInf ? 0.f : m_new;
    alpha[r] = std::exp2((m[r] - m_use) * kLog2e);
    vf sum = splat(0.f);
    for (int j = 0; j < DECODE_BLOCK_N; j += W) {
      const vf e = softmax_probs(load(row + j), splat(m_use));
      store(row + j, e);
      sum += e;
    }
    m[r] = m_new;
    l[r] = l[r] * alpha[r] + hsum(sum);
  }
}

struct Workspace {
  float *q, *o, *s, *m, *l, *alpha, *k_tile, *v_tile;
  const float** k_rows;
  const float** v_rows;
  const float** next_k_rows;  // the next tile's head-0 rows (prefetch after the last head)
  const float** next_v_rows;
  // Row pointers first (8-byte aligned at the 64-byte aligned base), then the fp32 buffers.
  static constexpr int64_t kPointerFloats = 4 * DECODE_BLOCK_N * int64_t(sizeof(void*)) / 4;
  // q, o: all_rows x Dp; m, l, alpha: all_rows (all_rows = Hkv * R); s: R x N; K/V tiles: N x Dp.
  static int64_t floats(int64_t all_rows, int64_t rows, int64_t dp) {
    return kPointerFloats + 2 * all_rows * dp + 3 * all_rows + rows * DECODE_BLOCK_N + 2 * DECODE_BLOCK_N * dp;
  }
  Workspace(float* base, int64_t all_rows, int64_t rows, int64_t dp) {
    k_rows = reinterpret_cast<const float**>(base);
    v_rows = k_rows + DECODE_BLOCK_N;
    next_k_rows = v_rows + DECODE_BLOCK_N;
    next_v_rows = next_k_rows + DECODE_BLOCK_N;
    q = base + kPointerFloats;
    o = q + all_rows * dp;
    m = o + all_rows * dp;
    l = m + all_rows;
    alpha = l + all_rows;
    s = alpha + all_rows;
    k_tile = s + rows * DECODE_BLOCK_N;
    v_tile = k_tile + DECODE_BLOCK_N * dp;
  }
};

// Element offset of key j's row (kv head kv_head) for batch b, in a batched or paged cache.
static inline int64_t cache_row(const DecodeParams& p, int64_t b, int64_t j, int64_t batch_stride,
                                int64_t row_stride, int64_t head_stride, int64_t kv_head) {
  if (p.block_table) {
    const int32_t* table = reinterpret_cast<const int32_t*>(p.block_table) + b * p.block_table_batch_stride;
    return table[j / p.page_size] * batch_stride + (j % p.page_size) * row_stride + kv_head * head_stride;
  }
  const int64_t cb = p.cache_batch_idx ? reinterpret_cast<const int32_t*>(p.cache_batch_idx)[b] : b;
  return cb * batch_stride + j * row_stride + kv_head * head_stride;
}

// Fills row pointers for keys [j0, j0 + n): fp32 rows in place when `direct`, else rows
// converted (and zero-padded to Dp) into `tile`.
static void gather_rows(const DecodeParams& p, const float** rows, float* tile, uintptr_t cache, int64_t b,
                        int64_t j0, int n, int64_t batch_stride, int64_t row_stride, int64_t head_stride,
                        int64_t kv_head, int64_t dp, bool direct) {
  const int64_t esize = dtype_size(p.dtype);
  for (int j = 0; j < n; ++j) {
    const int64_t off = cache_row(p, b, j0 + j, batch_stride, row_stride, head_stride, kv_head);
    const char* src = reinterpret_cast<const char*>(cache) + off * esize;
    if (direct) {
      rows[j] = reinterpret_cast<const float*>(src);
    } else {
      float* dst = tile + j * dp;
      load_row(dst, src, p.dtype, p.head_dim, 1.f);
      for (int64_t d = p.head_dim; d < dp; ++d) dst[d] = 0.f;
      rows[j] = dst;
    }
  }
}

struct Split {
  int64_t key_lo, key_hi;  // keys of this split
};

// Keys batch b may see at all, cut into `splits` ranges of whole tiles.
static Split split_range(const DecodeParams& p, int64_t b, int split, int splits) {
  const int64_t len = reinterpret_cast<const int32_t*>(p.seqlens_k)[b];
  const int64_t offset = len - p.seqlen_q;
  const int64_t lo = p.window_left >= 0 ? std::max<int64_t>(0, offset - p.window_left) : 0;
  const int64_t hi = p.window_right >= 0 ? std::min<int64_t>(len, p.seqlen_q - 1 + offset + p.window_right + 1) : len;
  if (hi <= lo) return {0, 0};
  const int64_t chunk = round_up(ceil_div(hi - lo, splits), DECODE_BLOCK_N);
  const int64_t a = std::min(hi, lo + split * chunk);
  return {a, std::min(hi, a + chunk)};
}

// One kv head's step over the key tile [j0, j0 + n): scores, options, softmax, P V.
// q, o, m, l, alpha: this head's R rows in the workspace; `next`: rows to prefetch meanwhile.
static void head_tile(const DecodeParams& p, Workspace& w, int64_t b, int64_t kv_head, int64_t j0, int n,
                      float* q, float* o, float* m, float* l, float* alpha, int64_t dp, bool direct,
                      const NextRows& next) {
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int rows = int(p.seqlen_q * group);
  const int64_t offset = reinterpret_cast<const int32_t*>(p.seqlens_k)[b] - p.seqlen_q;
  const float* slopes = reinterpret_cast<const float*>(p.alibi_slopes);
  gather_rows(p, w.k_rows, w.k_tile, p.k_cache, b, j0, n, p.k_batch_stride, p.k_row_stride, p.k_head_stride,
              kv_head, dp, direct);
  gather_rows(p, w.v_rows, w.v_tile, p.v_cache, b, j0, n, p.v_batch_stride, p.v_row_stride, p.v_head_stride,
              kv_head, dp, direct);
  const NextRows none{nullptr, nullptr, 0, 0, 0, 0};
  int r = 0;
  for (; r + DECODE_ROWS <= rows; r += DECODE_ROWS)
    dot_rows<DECODE_ROWS>(w.s + r * DECODE_BLOCK_N, q + r * dp, w.k_rows, n, dp, r == 0 ? next : none);
  for (; r < rows; ++r) dot_rows<1>(w.s + r * DECODE_BLOCK_N, q + r * dp, w.k_rows, n, dp, r == 0 ? next : none);
  const bool windowed = p.window_left >= 0 || p.window_right >= 0;
  for (r = 0; r < rows; ++r) {
    float* s = w.s + r * DECODE_BLOCK_N;
    const int64_t i = r / group, h = kv_head * group + r % group;
    if (p.softcap > 0.f)
      for (int j = 0; j < DECODE_BLOCK_N; j += W) store(s + j, p.softcap * tanhv(load(s + j)));
    if (slopes) {
      const float slope = slopes[b * p.n_heads + h];
      for (int j = 0; j < n; ++j) s[j] -= slope * float(std::abs(i + offset - (j0 + j)));
    }
    if (windowed)
      for (int j = 0; j < n; ++j) {
        const int64_t key = j0 + j;
        const bool hidden = (p.window_right >= 0 && key > i + offset + p.window_right) ||
                            (p.window_left >= 0 && key < i + offset - p.window_left);
        if (hidden) s[j] = kNegInf;
      }
    for (int j = n; j < DECODE_BLOCK_N; ++j) s[j] = kNegInf;
  }
  online_softmax_update(w.s, rows, m, l, alpha);
  if (windowed && any_nonfinite(w.v_rows, n, p.head_dim))
    pv_heads<true>(o, w.s, alpha, w.v_rows, n, dp, rows);
  else
    pv_heads<false>(o, w.s, alpha, w.v_rows, n, dp, rows);
}

// part_out (Hkv, R, D) = O / l and part_lse (Hkv, R) = m + ln l of batch b over `range`.
static void decode_split(const DecodeParams& p, Workspace& w, int64_t b, const Split& range, float* part_out,
                         float* part_lse, int64_t dp, bool direct) {
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t rows = p.seqlen_q * group;
  const int64_t all_rows = p.n_kv_heads * rows;
  const int64_t esize = dtype_size(p.dtype);
  const float q_scale = p.softcap > 0.f ? p.softmax_scale / p.softcap : p.softmax_scale;
  for (int64_t x = 0; x < all_rows; ++x) {
    const int64_t r = x % rows, h = (x / rows) * group + r % group, i = r / group;
    const char* q = reinterpret_cast<const char*>(p.q) + (b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride) * esize;
    load_row(w.q + x * dp, q, p.dtype, p.head_dim, q_scale);
    for (int64_t d = p.head_dim; d < dp; ++d) w.q[x * dp + d] = 0.f;
    for (int64_t d = 0; d < dp; ++d) w.o[x * dp + d] = 0.f;
    w.m[x] = kNegInf;
    w.l[x] = 0.f;
  }
  for (int64_t j0 = range.key_lo; j0 < range.key_hi; j0 += DECODE_BLOCK_N) {
    const int n = int(std::min<int64_t>(DECODE_BLOCK_N, range.key_hi - j0));
    // Prefetch targets (in place fp32 rows only): the next head's rows, one head stride past
    // this head's (batched or paged alike); after the last head, the next tile's head 0.
    const int n_next = int(std::max<int64_t>(0, std::min<int64_t>(DECODE_BLOCK_N, range.key_hi - j0 - DECODE_BLOCK_N)));
    if (direct)
      for (int j = 0; j < n_next; ++j) {
        const int64_t key = j0 + DECODE_BLOCK_N + j;
        w.next_k_rows[j] = reinterpret_cast<const float*>(p.k_cache) +
                           cache_row(p, b, key, p.k_batch_stride, p.k_row_stride, p.k_head_stride, 0);
        w.next_v_rows[j] = reinterpret_cast<const float*>(p.v_cache) +
                           cache_row(p, b, key, p.v_batch_stride, p.v_row_stride, p.v_head_stride, 0);
      }
    const int64_t row_bytes = p.head_dim * 4;
    for (int64_t kv_head = 0; kv_head < p.n_kv_heads; ++kv_head) {
      const int64_t x = kv_head * rows;
      const bool last = kv_head + 1 == p.n_kv_heads;
      NextRows next = last ? NextRows{w.next_k_rows, w.next_v_rows, 0, 0, row_bytes, n_next}
                           : NextRows{w.k_rows, w.v_rows, p.k_head_stride, p.v_head_stride, row_bytes, n};
      if (!direct) next.count = 0;
      head_tile(p, w, b, kv_head, j0, n, w.q + x * dp, w.o + x * dp, w.m + x, w.l + x, w.alpha + x, dp, direct,
                next);
    }
  }
  for (int64_t x = 0; x < all_rows; ++x) {
    const float l = w.l[x];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int64_t d = 0; d < p.head_dim; ++d) part_out[x * p.head_dim + d] = w.o[x * dp + d] * inv;
    part_lse[x] = l > 0.f ? w.m[x] + std::log(l) : kNegInf;
  }
}

// Splits per batch: enough items for ~4 per thread (load balance under the dynamic
// schedule), never more than the longest sequence has key tiles.
static int choose_splits(const DecodeParams& p, int threads) {
  if (p.num_splits > 0) return p.num_splits;
  int64_t longest = 0;
  for (int64_t b = 0; b < p.batch; ++b)
    longest = std::max<int64_t>(longest, reinterpret_cast<const int32_t*>(p.seqlens_k)[b]);
  const int64_t want = ceil_div(4 * int64_t(threads), p.batch);
  return int(std::max<int64_t>(1, std::min(want, ceil_div(longest, DECODE_BLOCK_N))));
}

}  // namespace dec

void decode(const DecodeParams& p) {
  const int threads = team_size(p.num_threads);
  const int splits = dec::choose_splits(p, threads);
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t rows = p.seqlen_q * group;
  const int64_t all_rows = p.n_kv_heads * rows;  // = H * Sq
  const int64_t dp = round_up(p.head_dim, W);
  const bool direct = p.dtype == DType::kFloat32 && p.head_dim % W == 0;
  const int64_t items = p.batch * splits;
  // Partial results, item-major: part_out (items, Hkv, R, D), part_lse (items, Hkv, R).
  Floats part_out(items * all_rows * p.head_dim), part_lse(items * all_rows);
  const int64_t per_thread = round_up(dec::Workspace::floats(all_rows, rows, dp), 16);
  Floats scratch(per_thread * threads);
  const int64_t esize = dtype_size(p.dtype);
  // One parallel region for both passes (one wake-up of the team per call; the implicit barrier
  // of the first loop orders them).
#pragma omp parallel num_threads(threads)
  {
    dec::Workspace w(scratch.get() + thread_id() * per_thread, all_rows, rows, dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / splits;
      dec::decode_split(p, w, b, dec::split_range(p, b, int(item % splits), splits),
                        part_out.get() + item * all_rows * p.head_dim, part_lse.get() + item * all_rows, dp, direct);
    }
#pragma omp for schedule(static)
    for (int64_t y = 0; y < p.batch * all_rows; ++y) {
      const int64_t b = y / all_rows, x = y % all_rows;  // x = kv_head * R + r
      const int64_t r = x % rows, h = (x / rows) * group + r % group, i = r / group;
      float* lse_s = part_lse.get() + b * splits * all_rows + x;  // split s at lse_s[s * all_rows]
      const float* out_s = part_out.get() + (b * splits * all_rows + x) * p.head_dim;
      float top = kNegInf;
      for (int s = 0; s < splits; ++s) top = std::max(top, lse_s[s * all_rows]);
      const float top_use = top == kNegInf ? 0.f : top;
      float total = 0.f;
      for (int s = 0; s < splits; ++s) total += std::exp(lse_s[s * all_rows] - top_use);
      // Each split's weight e^(lse_s - lse), computed once per row, in place of its lse.
      for (int s = 0; s < splits; ++s)
        lse_s[s * all_rows] = total > 0.f ? std::exp(lse_s[s * all_rows] - top_use) / total : 0.f;
      void* out = reinterpret_cast<char*>(p.out) + (b * p.out_batch_stride + i * p.out_row_stride + h * p.out_head_stride) * esize;
      for (int64_t d = 0; d < p.head_dim; ++d) {
        float acc = 0.f;
        for (int s = 0; s < splits; ++s) acc += lse_s[s * all_rows] * out_s[s * all_rows * p.head_dim + d];
        store_elem(out, d, p.dtype, acc);
      }
      float* lse = reinterpret_cast<float*>(p.lse) + b * p.lse_batch_stride + h * p.lse_head_stride;
      lse[i] = total > 0.f ? top + std::log(total) : kNegInf;
    }
  }
}
