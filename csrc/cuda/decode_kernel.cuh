// decode_kernel.cuh — split-KV decode (flash-decoding) against a contiguous or paged KV cache.
//
// Grid: (query tiles, B * Hkv, num_splits). A block owns one kv head of one sequence and packs
// every query that reads it: the GQA group's heads times the Sq new tokens, packed row
// r = token r / group, head kv_head * group + r % group. Each K/V byte is therefore read once
// per group, not once per query head. Split s attends the s-th of num_splits equal runs of the
// key tiles its rows can see and writes a normalized partial output and its LSE; a combine
// kernel merges the splits in split order (num_splits == 1 writes the result directly).
//
// Two split kernels, chosen by the packed row count (decode_tile_shape):
//   * >= 16 rows: decode_mma_kernel, the tensor-core key loop of tile_pipeline.cuh over 64-row
//     tiles (4 warps x 16 rows; a warp without rows only copies);
//   * < 16 rows (single-token decode with small groups): decode_fma_kernel, fp32 FMA dot
//     products, since an mma tile would be mostly padding. K and V still stream through shared
//     memory with double-buffered 16-byte cp.async copies.
// Keys past a sequence's end are zero-filled by the copies (never read, and the page table is
// never consulted for them) and masked.
#pragma once

#include <cmath>
#include <cstdint>

#include "../simt/simt.h"
#include "online_softmax.cuh"
#include "params.h"
#include "score_rule.cuh"
#include "tile_pipeline.cuh"

namespace attn {

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

template <int D>
struct FmaTile {
  static constexpr int kThreads = 128;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kMaxRows = 16;  // packed rows per block (16 or more go to the mma kernel)
  static constexpr int kBlockN = MmaTile<D>::kBlockN;
  static constexpr int kPitch = D + 8;  // 16-byte pad: 8 consecutive rows hit distinct banks
  static constexpr int kKVElems = kBlockN * kPitch;
  // Scores: thread t computes key t % kBlockN for rows t / kBlockN + kScoreGroups * i.
  static constexpr int kScoreGroups = kThreads / kBlockN;
  // Output: thread t accumulates columns 2 (t % (D / 2)) + 0, 1 of rows t / (D / 2) + kPassRows * i.
  static constexpr int kPassRows = kThreads / (D / 2);
  // Shared memory: K[2], V[2] (16-bit), then fp32 Q (kMaxRows x D), scores/probabilities
  // (kMaxRows x kBlockN) and each row's rescale factor.
  static constexpr size_t kKVBytes = 4 * kKVElems * 2;
  static constexpr size_t kSmemBytes = kKVBytes + (kMaxRows * D + kMaxRows * kBlockN + kMaxRows) * sizeof(float);
  static_assert(kThreads % kBlockN == 0 && kMaxRows % kScoreGroups == 0, "score ownership");
  static_assert(kThreads % (D / 2) == 0 && kMaxRows % kPassRows == 0, "output ownership");
  static_assert(kKVBytes % 16 == 0, "fp32 areas stay aligned");
};

template <int D>
constexpr DecodeTileShape decode_tile_shape_for(int packed_rows) {
  return packed_rows >= 16 ? DecodeTileShape{MmaTile<D>::kBlockM, MmaTile<D>::kBlockN, true}
                           : DecodeTileShape{FmaTile<D>::kMaxRows, FmaTile<D>::kBlockN, false};
}

// Global address of key n of one sequence's kv head in a contiguous or paged cache.
template <typename T>
struct CacheRows {
  const T* base;  // cache + kv_head * head_stride (+ the sequence's row when contiguous)
  int64_t page_stride, row_stride;
  const int32_t* pages;  // the sequence's block_table row, or nullptr
  int page_size;

  __device__ __forceinline__ const T* operator()(int n) const {
    if (pages == nullptr) return base + n * row_stride;
    return base + pages[n / page_size] * page_stride + (n % page_size) * row_stride;
  }
};

// Everything a split block derives from its block index: its sequence, kv head, packed rows,
// key range and score rule.
template <typename T>
struct DecodeBlock {
  int batch, kv_head, split, group, n_rows, m0, rows_here;
  int diag;                          // query token i sits at key position i + diag
  int key_begin, key_end;            // this split's keys, whole tiles
  ScoreRule rule;

  __device__ __forceinline__ DecodeBlock(const DecodeParams& p, int block_m, int block_n)
      : rule(p.softmax_scale, p.softcap, p.seqlens_k[blockIdx.y / p.n_kv_heads], p.window_left, p.window_right) {
    const int n_kv_heads = p.n_kv_heads;
    batch = blockIdx.y / n_kv_heads;
    kv_head = blockIdx.y % n_kv_heads;
    split = blockIdx.z;
    group = p.n_heads / n_kv_heads;
    n_rows = p.seqlen_q * group;
    m0 = blockIdx.x * block_m;
    rows_here = imin(block_m, n_rows - m0);
    diag = rule.seqlen_k - p.seqlen_q;

    // Keys some row of this tile sees, rounded out to tiles, then this split's share of them.
    int lo, hi;
    rule.key_range(m0 / group + diag, (m0 + rows_here - 1) / group + diag, lo, hi);
    key_begin = key_end = 0;
    if (hi > lo) {
      const int start = lo / block_n * block_n;
      const int tiles = (hi - start + block_n - 1) / block_n;
      const int per_split = (tiles + p.num_splits - 1) / p.num_splits;
      const int end = start + tiles * block_n;
      key_begin = imin(start + split * per_split * block_n, end);
      key_end = imin(key_begin + per_split * block_n, end);
    }
  }

  __device__ __forceinline__ int token(int row) const { return row / group; }
  __device__ __forceinline__ int head(int row) const { return kv_head * group + row % group; }

  // ALiBi slope of a packed row in the log2 domain (0 without ALiBi).
  __device__ __forceinline__ float slope_log2(const DecodeParams& p, int row) const {
    return p.alibi_slopes == nullptr ? 0.f : p.alibi_slopes[batch * p.n_heads + head(row)] * kLog2e;
  }

  // Raw q.k of a query at token `tok` and key `key` -> log2-domain score, -inf where invisible
  // (kMods: softcap and ALiBi may be on).
  template <bool kMods>
  __device__ __forceinline__ float score(float qk, float slope, int tok, int key) const {
    return rule.score<kMods>(qk, slope, tok + diag, key);
  }

  __device__ __forceinline__ const T* q_row(const DecodeParams& p, int row) const {
    return static_cast<const T*>(p.q) + batch * p.q_batch_stride + token(row) * p.q_row_stride +
           head(row) * p.q_head_stride;
  }

  __device__ __forceinline__ CacheRows<T> cache_rows(const DecodeParams& p, const void* cache, int64_t batch_stride,
                                                     int64_t row_stride, int64_t head_stride) const {
    const T* base = static_cast<const T*>(cache) + kv_head * head_stride;
    if (p.block_table != nullptr) {
      return {base, batch_stride, row_stride, p.block_table + batch * p.block_table_batch_stride, p.page_size};
    }
    const int cache_row = p.cache_batch_idx != nullptr ? p.cache_batch_idx[batch] : batch;
    return {base + cache_row * batch_stride, batch_stride, row_stride, nullptr, 1};
  }

  // Stores output columns c, c + 1 and (when write_lse) the LSE of a packed row: the final
  // result (num_splits == 1) or this split's fp32 partial.
  __device__ __forceinline__ void store(const DecodeParams& p, int row, int c, float o0, float o1, bool write_lse,
                                        float lse) const {
    const int tok = token(row), h = head(row);
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + batch * p.out_batch_stride + tok * p.out_row_stride + h * p.out_head_stride;
      *reinterpret_cast<uint32_t*>(out + c) = simt::pack2<T>(o0, o1);
      if (write_lse) p.lse[batch * p.lse_batch_stride + h * p.lse_head_stride + tok] = lse;
    } else {
      const int64_t at = ((static_cast<int64_t>(split) * p.batch + batch) * p.seqlen_q + tok) * p.n_heads + h;
      p.out_partial[at * p.head_dim + c] = o0;
      p.out_partial[at * p.head_dim + c + 1] = o1;
      if (write_lse) {
        p.lse_partial[((static_cast<int64_t>(split) * p.batch + batch) * p.n_heads + h) * p.seqlen_q + tok] = lse;
      }
    }
  }
};

template <int D, typename T, bool kMods>
__global__ void __launch_bounds__(MmaTile<D>::kThreads) decode_mma_kernel(const DecodeParams p) {
  using Tile = MmaTile<D>;
  constexpr int kBlockN = Tile::kBlockN, kOutTiles = D / 8;
  const DecodeBlock<T> blk(p, Tile::kBlockM, kBlockN);
  const int warp = simt::warp_id(), lane = simt::lane_id();
  const int g = lane / 4, t = lane % 4;
  const int warp_row0 = 16 * warp;  // first row of this warp within the tile

  float o[kOutTiles][4] = {};
  RowState rows;
  init_rows(rows);

  if (blk.key_end > blk.key_begin) {
    T* smem = simt::dynamic_smem<T>();
    load_rows_async<D, Tile::kBlockM, Tile::kThreads, Tile::kPitch>(
        smem, [=](int r) { return blk.q_row(p, blk.m0 + r); }, blk.rows_here);
    // The two rows this thread's accumulators cover (rows past the tile's end are clamped;
    // their scores are computed but never stored).
    int tok[2];
    float slope[2];
    SIMT_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int row = blk.m0 + imin(warp_row0 + g + 8 * i, blk.rows_here - 1);
      tok[i] = blk.token(row);
      slope[i] = blk.slope_log2(p, row);
    }
    auto scores = [&](auto& s, int n0) {
      for_each_score(s, warp_row0, n0, [&](float& x, int row, int col) {
        const int i = (row - warp_row0) / 8;
        x = blk.template score<kMods>(x, slope[i], tok[i], col);
      });
    };
    const CacheRows<T> k_rows = blk.cache_rows(p, p.k_cache, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    const CacheRows<T> v_rows = blk.cache_rows(p, p.v_cache, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    const int n_tiles = (blk.key_end - blk.key_begin) / kBlockN;
    attend_key_tiles<D, T>(smem, blk.key_begin, n_tiles, blk.rule.seqlen_k, k_rows, v_rows, scores,
                           warp_row0 < blk.rows_here, o, rows);
  }

  float row_lse[2];
  finish_rows(rows, o, row_lse);
  SIMT_UNROLL
  for (int i = 0; i < 2; ++i) {
    const int row = warp_row0 + g + 8 * i;
    if (row >= blk.rows_here) continue;
    SIMT_UNROLL
    for (int j = 0; j < kOutTiles; ++j) {
      blk.store(p, blk.m0 + row, 8 * j + 2 * t, o[j][2 * i], o[j][2 * i + 1], j == 0 && t == 0, row_lse[i]);
    }
  }
}

__device__ __forceinline__ float warp_max(float x) {
  SIMT_UNROLL
  for (int m = 16; m > 0; m /= 2) x = fmaxf(x, simt::shfl_xor_sync(0xffffffffu, x, m));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  SIMT_UNROLL
  for (int m = 16; m > 0; m /= 2) x += simt::shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

template <int D, typename T>
__global__ void __launch_bounds__(FmaTile<D>::kThreads) decode_fma_kernel(const DecodeParams p) {
  using Tile = FmaTile<D>;
  constexpr int kBlockN = Tile::kBlockN, kPitch = Tile::kPitch, kMaxRows = Tile::kMaxRows;
  constexpr int kGroups = Tile::kScoreGroups, kPassRows = Tile::kPassRows;
  constexpr int kRowsPerWarp = kMaxRows / Tile::kWarps;
  const DecodeBlock<T> blk(p, kMaxRows, kBlockN);
  const int tid = threadIdx.x, warp = simt::warp_id(), lane = simt::lane_id();
  const int rows = blk.rows_here;

  T* k_smem = simt::dynamic_smem<T>();                        // (2, kBlockN, kPitch)
  T* v_smem = k_smem + 2 * Tile::kKVElems;                    // (2, kBlockN, kPitch)
  float* q_smem = reinterpret_cast<float*>(k_smem + 4 * Tile::kKVElems);  // (kMaxRows, D)
  float* s_smem = q_smem + kMaxRows * D;                      // (kMaxRows, kBlockN)
  float* alpha_smem = s_smem + kMaxRows * kBlockN;            // (kMaxRows)

  // Running max (log2 domain) and sum of the rows warp w owns for the softmax: w + kWarps * i.
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp];
  SIMT_UNROLL
  for (int i = 0; i < kRowsPerWarp; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.f;
  }
  float o[kMaxRows / kPassRows][2] = {};
  const int out_col = 2 * (tid % (D / 2)), out_row0 = tid / (D / 2);

  const int n_tiles = (blk.key_end - blk.key_begin) / kBlockN;
  if (n_tiles > 0) {
    const CacheRows<T> k_rows = blk.cache_rows(p, p.k_cache, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
    const CacheRows<T> v_rows = blk.cache_rows(p, p.v_cache, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
    auto load_tiles = [&](int n) {
      const int n0 = blk.key_begin + n * kBlockN, buffer = n % 2;
      load_rows_async<D, kBlockN, Tile::kThreads, kPitch>(
          k_smem + buffer * Tile::kKVElems, [=](int r) { return k_rows(n0 + r); }, blk.rule.seqlen_k - n0);
      load_rows_async<D, kBlockN, Tile::kThreads, kPitch>(
          v_smem + buffer * Tile::kKVElems, [=](int r) { return v_rows(n0 + r); }, blk.rule.seqlen_k - n0);
      simt::cp_async_commit();
    };
    load_tiles(0);
    for (int i = tid; i < rows * D; i += Tile::kThreads) {
      q_smem[i] = simt::to_float(blk.q_row(p, blk.m0 + i / D)[i % D]);
    }
    // The rows this thread scores: key_row_first + kGroups * i.
    const int key = tid % kBlockN, key_row_first = tid / kBlockN;
    int tok[kMaxRows / kGroups];
    float slope[kMaxRows / kGroups];
    SIMT_UNROLL
    for (int i = 0; i < kMaxRows / kGroups; ++i) {
      const int row = blk.m0 + imin(key_row_first + kGroups * i, rows - 1);
      tok[i] = blk.token(row);
      slope[i] = blk.slope_log2(p, row);
    }

    for (int n = 0; n < n_tiles; ++n) {
      const int n0 = blk.key_begin + n * kBlockN;
      const T* k_tile = k_smem + n % 2 * Tile::kKVElems;
      const T* v_tile = v_smem + n % 2 * Tile::kKVElems;
      simt::cp_async_wait<0>();  // tile n landed
      __syncthreads();           // ...for every thread, and everyone is done with tile n - 1
      if (n + 1 < n_tiles) load_tiles(n + 1);

      // Scores: 16-byte reads of one key row, dotted with each owned row of Q.
      float acc[kMaxRows / kGroups] = {};
      SIMT_UNROLL
      for (int c = 0; c < D; c += 8) {
        const uint4 chunk = *reinterpret_cast<const uint4*>(k_tile + key * kPitch + c);
        const T* kv = reinterpret_cast<const T*>(&chunk);
        float kf[8];
        SIMT_UNROLL
        for (int e = 0; e < 8; ++e) kf[e] = simt::to_float(kv[e]);
        SIMT_UNROLL
        for (int i = 0; i < kMaxRows / kGroups; ++i) {
          const int r = key_row_first + kGroups * i;
          if (r >= rows) continue;
          const float* qr = q_smem + r * D + c;
          SIMT_UNROLL
          for (int e = 0; e < 8; ++e) acc[i] = fmaf(qr[e], kf[e], acc[i]);
        }
      }
      SIMT_UNROLL
      for (int i = 0; i < kMaxRows / kGroups; ++i) {
        const int r = key_row_first + kGroups * i;
        if (r < rows) s_smem[r * kBlockN + key] = blk.template score<true>(acc[i], slope[i], tok[i], n0 + key);
      }
      __syncthreads();  // every score written before the softmax reads its row

      // Online softmax, one warp per row: probabilities replace the scores.
      SIMT_UNROLL
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const int r = warp + Tile::kWarps * i;
        if (r >= rows) continue;  // uniform across the warp
        float x[kBlockN / 32];
        float tile_max = -INFINITY;
        SIMT_UNROLL
        for (int c = 0; c < kBlockN / 32; ++c) {
          x[c] = s_smem[r * kBlockN + lane + 32 * c];
          tile_max = fmaxf(tile_max, x[c]);
        }
        const float new_max = fmaxf(row_max[i], warp_max(tile_max));
        const float shift = new_max == -INFINITY ? 0.f : new_max;  // no key seen yet: keep 0, not NaN
        float tile_sum = 0.f;
        SIMT_UNROLL
        for (int c = 0; c < kBlockN / 32; ++c) {
          x[c] = exp2f(x[c] - shift);
          tile_sum += x[c];
          s_smem[r * kBlockN + lane + 32 * c] = x[c];
        }
        const float alpha = exp2f(row_max[i] - shift);
        row_sum[i] = row_sum[i] * alpha + warp_sum(tile_sum);
        row_max[i] = new_max;
        if (lane == 0) alpha_smem[r] = alpha;
      }
      __syncthreads();  // probabilities and rescale factors written before P V reads them

      // O = alpha O + P V for this thread's two columns of its rows.
      SIMT_UNROLL
      for (int i = 0; i < kMaxRows / kPassRows; ++i) {
        const int r = out_row0 + kPassRows * i;
        if (r >= rows) continue;
        const float alpha = alpha_smem[r];
        float o0 = o[i][0] * alpha, o1 = o[i][1] * alpha;
        const float* pr = s_smem + r * kBlockN;
        for (int j = 0; j < kBlockN; ++j) {
          const T* vj = v_tile + j * kPitch + out_col;
          o0 = fmaf(pr[j], simt::to_float(vj[0]), o0);
          o1 = fmaf(pr[j], simt::to_float(vj[1]), o1);
        }
        o[i][0] = o0;
        o[i][1] = o1;
      }
    }
  }

  // Hand each row's max and sum from its softmax warp to the threads holding its output.
  __syncthreads();  // the last tile's reads of alpha_smem / s_smem are done
  float* max_smem = s_smem;
  float* sum_smem = alpha_smem;
  SIMT_UNROLL
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + Tile::kWarps * i;
    if (r < rows && lane == 0) {
      max_smem[r] = row_max[i];
      sum_smem[r] = row_sum[i];
    }
  }
  __syncthreads();
  SIMT_UNROLL
  for (int i = 0; i < kMaxRows / kPassRows; ++i) {
    const int r = out_row0 + kPassRows * i;
    if (r >= rows) continue;
    const float sum = sum_smem[r];
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    const float lse = sum > 0.f ? (max_smem[r] + log2f(sum)) * kLn2 : -INFINITY;
    blk.store(p, blk.m0 + r, out_col, o[i][0] * inv, o[i][1] * inv, out_col == 0, lse);
  }
}

// Merges the splits of one (batch, token, head) row, one thread per column, in split order:
// m = max lse_s, w_s = exp(lse_s - m), out = sum w_s out_s / sum w_s, lse = m + log sum w_s.
// Splits that saw no key have lse -inf and weight 0; a row no split saw gets out 0, lse -inf.
template <int D, typename T>
__global__ void __launch_bounds__(D) decode_combine_kernel(const DecodeParams p) {
  const int token = blockIdx.x, head = blockIdx.y, batch = blockIdx.z, c = threadIdx.x;
  const int64_t split_rows = static_cast<int64_t>(p.batch) * p.seqlen_q * p.n_heads;  // rows per split
  const int64_t row = (static_cast<int64_t>(batch) * p.seqlen_q + token) * p.n_heads + head;
  const int64_t lse_row = (static_cast<int64_t>(batch) * p.n_heads + head) * p.seqlen_q + token;
  float m = -INFINITY, total = 0.f, acc = 0.f;
  for (int s = 0; s < p.num_splits; ++s) {
    const float lse_s = p.lse_partial[s * split_rows + lse_row];
    const float m_new = fmaxf(m, lse_s);
    const float shift = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2f((m - shift) * kLog2e);
    const float w = exp2f((lse_s - shift) * kLog2e);
    acc = acc * alpha + p.out_partial[(s * split_rows + row) * D + c] * w;
    total = total * alpha + w;
    m = m_new;
  }
  T* out = static_cast<T*>(p.out) + batch * p.out_batch_stride + token * p.out_row_stride + head * p.out_head_stride;
  out[c] = simt::from_float<T>(total > 0.f ? acc / total : 0.f);
  if (c == 0) {
    p.lse[batch * p.lse_batch_stride + head * p.lse_head_stride + token] =
        total > 0.f ? m + logf(total) : -INFINITY;
  }
}

template <int D, typename T>
void launch_decode(const DecodeParams& p, void* stream) {
  const int packed_rows = p.seqlen_q * (p.n_heads / p.n_kv_heads);
  const DecodeTileShape shape = decode_tile_shape_for<D>(packed_rows);
  const simt::Dim3 grid((packed_rows + shape.block_m - 1) / shape.block_m, p.batch * p.n_kv_heads, p.num_splits);
  if (shape.mma) {
    // Softcap and ALiBi get their own instantiation, so the plain kernel keeps its registers.
    const bool mods = p.softcap > 0.f || p.alibi_slopes != nullptr;
    simt::launch(mods ? decode_mma_kernel<D, T, true> : decode_mma_kernel<D, T, false>, grid,
                 simt::Dim3(MmaTile<D>::kThreads), MmaTile<D>::kSmemElems * sizeof(T), stream, p);
  } else {
    simt::launch(decode_fma_kernel<D, T>, grid, simt::Dim3(FmaTile<D>::kThreads), FmaTile<D>::kSmemBytes, stream,
                 p);
  }
  if (p.num_splits > 1) {
    simt::launch(decode_combine_kernel<D, T>, simt::Dim3(p.seqlen_q, p.n_heads, p.batch), simt::Dim3(D), 0, stream,
                 p);
  }
}

}  // namespace attn
