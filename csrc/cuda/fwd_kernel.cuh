// fwd_kernel.cuh — FlashAttention-2 style forward kernel on mma.sync tensor cores.
//
// One block computes a 64-row query tile of one (batch, head) with the key loop of
// tile_pipeline.cuh: 4 warps of 16 query rows, Q fragments in registers, K and V tiles
// double-buffered through shared memory by cp.async. The forward's own parts: the key range
// (the causal diagonal and the window bound it), the scores (score_rule.cuh: only tiles that
// cross a mask edge pay for the mask) and the normalization O /= rowsum, lse = m + log(rowsum).
// kMods instantiates softcap and ALiBi; without them the scores are a plain scale.
//
// Shared memory per block: Q (64 x D) + 2 x K (kBlockN x D) + 2 x V (kBlockN x D), each row
// padded by 16 bytes (MmaTile::kPitch).
#pragma once

#include <cmath>

#include "../simt/simt.h"
#include "online_softmax.cuh"
#include "params.h"
#include "score_rule.cuh"
#include "tile_pipeline.cuh"

namespace attn {

template <int D, typename T, bool kMods>
__global__ void __launch_bounds__(MmaTile<D>::kThreads) fwd_kernel(const FwdParams p) {
  using Tile = MmaTile<D>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN;
  constexpr int kOutTiles = D / 8;           // n-tiles of O

  const int m0 = blockIdx.x * kBlockM;
  const int head = blockIdx.y, batch = blockIdx.z;
  const int kv_head = head / (p.n_heads / p.n_kv_heads);
  const int warp = simt::warp_id(), lane = simt::lane_id();
  const int g = lane / 4, t = lane % 4;
  const int warp_row0 = m0 + 16 * warp;  // first query row of this warp

  const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;
  T* out = static_cast<T*>(p.out) + batch * p.out_batch_stride + head * p.out_head_stride;
  float* lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride;

  // Keys some row of this tile sees, rounded out to whole tiles.
  const ScoreRule rule(p.softmax_scale, p.softcap, p.seqlen_k, p.window_left, p.window_right);
  const int last_row = (m0 + kBlockM < p.seqlen_q ? m0 + kBlockM : p.seqlen_q) - 1;
  int key_lo, key_hi;
  rule.key_range(m0 + p.diagonal_offset, last_row + p.diagonal_offset, key_lo, key_hi);
  const int key_begin = key_lo / kBlockN * kBlockN;
  const int n_tiles = key_hi > key_lo ? (key_hi - key_begin + kBlockN - 1) / kBlockN : 0;

  float o[kOutTiles][4] = {};
  RowState rows;
  init_rows(rows);

  if (n_tiles > 0) {
    T* smem = simt::dynamic_smem<T>();
    const int64_t q_stride = p.q_row_stride, k_stride = p.k_row_stride, v_stride = p.v_row_stride;
    load_rows_async<D, kBlockM, Tile::kThreads, Tile::kPitch>(
        smem, [=](int r) { return q + (m0 + r) * q_stride; }, p.seqlen_q - m0);
    const float slope_log2 = kMods && p.alibi_slopes != nullptr
                                 ? p.alibi_slopes[batch * p.n_heads + head] * kLog2e : 0.f;
    const int warp_pos0 = warp_row0 + p.diagonal_offset;  // key position of the warp's first row
    auto scores = [&](auto& s, int n0) {
      if (rule.all_visible(warp_pos0, warp_pos0 + 15, n0, n0 + kBlockN)) {
        for_each_score(s, warp_pos0, n0, [&](float& x, int pos, int key) {
          x = rule.transform<kMods>(x, slope_log2, pos, key);
        });
      } else {
        for_each_score(s, warp_pos0, n0, [&](float& x, int pos, int key) {
          x = rule.score<kMods>(x, slope_log2, pos, key);
        });
      }
    };
    attend_key_tiles<D, T>(
        smem, key_begin, n_tiles, p.seqlen_k, [=](int j) { return k + j * k_stride; },
        [=](int j) { return v + j * v_stride; }, scores, true, o, rows);
  }

  float row_lse[2];
  finish_rows(rows, o, row_lse);

  // Each thread writes columns 8j + 2t, +1 of rows g and g + 8 of the warp's slice.
  SIMT_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int row = warp_row0 + g + 8 * r;
    if (row >= p.seqlen_q) continue;
    T* out_row = out + row * p.out_row_stride;
    SIMT_UNROLL
    for (int j = 0; j < kOutTiles; ++j) {
      *reinterpret_cast<uint32_t*>(out_row + 8 * j + 2 * t) = simt::pack2<T>(o[j][2 * r], o[j][2 * r + 1]);
    }
    if (t == 0) lse[row] = row_lse[r];
  }
}

template <int D, typename T>
void launch_fwd(const FwdParams& p, void* stream) {
  using Tile = MmaTile<D>;
  const simt::Dim3 grid((p.seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM, p.n_heads, p.batch);
  const size_t smem_bytes = Tile::kSmemElems * sizeof(T);
  if (p.softcap > 0.f || p.alibi_slopes != nullptr) {
    simt::launch(fwd_kernel<D, T, true>, grid, simt::Dim3(Tile::kThreads), smem_bytes, stream, p);
  } else {
    simt::launch(fwd_kernel<D, T, false>, grid, simt::Dim3(Tile::kThreads), smem_bytes, stream, p);
  }
}

}  // namespace attn
