// fwd_kernel.cuh — FlashAttention-2 style forward kernel on mma.sync tensor cores.
//
// One block computes a 64-row query tile of one (batch, head) with the key loop of
// tile_pipeline.cuh: 4 warps of 16 query rows, Q fragments in registers, K and V tiles
// double-buffered through shared memory by cp.async. Only the key range (the causal diagonal
// bounds it) and the masking are the forward's own:
//
//   O /= rowsum; lse = m + log(rowsum)
//
// Shared memory per block: Q (64 x D) + 2 x K (kBlockN x D) + 2 x V (kBlockN x D), each row
// padded by 16 bytes (MmaTile::kPitch).
#pragma once

#include <cmath>

#include "../simt/simt.h"
#include "online_softmax.cuh"
#include "params.h"
#include "tile_pipeline.cuh"

namespace attn {

template <int D, typename T>
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

  // Keys visible to some row of this tile: [0, key_end). The last row, m0 + kBlockM - 1,
  // sees keys up to m0 + kBlockM - 1 + offset under causal masking.
  const int causal_end = m0 + kBlockM + p.diagonal_offset;
  const int key_end = p.causal && causal_end < p.seqlen_k ? causal_end : p.seqlen_k;
  const int n_tiles = key_end > 0 ? (key_end + kBlockN - 1) / kBlockN : 0;

  float o[kOutTiles][4] = {};
  RowState rows;
  init_rows(rows);

  if (n_tiles > 0) {
    T* smem = simt::dynamic_smem<T>();
    const int64_t q_stride = p.q_row_stride, k_stride = p.k_row_stride, v_stride = p.v_row_stride;
    load_rows_async<D, kBlockM, Tile::kThreads, Tile::kPitch>(
        smem, [=](int r) { return q + (m0 + r) * q_stride; }, p.seqlen_q - m0);
    const float scale_log2 = p.softmax_scale * kLog2e;
    // Scale, then mask keys past the end (j >= seqlen_k) and, with causal, past the diagonal
    // (j > i + offset); only tiles that cross one of those edges pay for the mask.
    auto scores = [&](auto& s, int n0) {
      for_each_score(s, warp_row0, n0, [&](float& x, int, int) { x *= scale_log2; });
      const bool tile_crosses_edge = n0 + kBlockN > p.seqlen_k;
      const bool tile_crosses_diagonal = p.causal && n0 + kBlockN - 1 > warp_row0 + p.diagonal_offset;
      if (tile_crosses_edge || tile_crosses_diagonal) {
        for_each_score(s, warp_row0, n0, [&](float& x, int row, int col) {
          if (col >= p.seqlen_k || (p.causal && col > row + p.diagonal_offset)) x = -INFINITY;
        });
      }
    };
    attend_key_tiles<D, T>(
        smem, 0, n_tiles, p.seqlen_k, [=](int j) { return k + j * k_stride; },
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
  simt::launch(fwd_kernel<D, T>, grid, simt::Dim3(Tile::kThreads), smem_bytes, stream, p);
}

}  // namespace attn
