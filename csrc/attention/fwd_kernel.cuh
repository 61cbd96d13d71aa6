// fwd_kernel.cuh — FlashAttention-2 style forward kernel on mma.sync tensor cores.
//
// One block computes a 64-row query tile of one (batch, head): 4 warps, each owning 16 query
// rows. Q fragments stay in registers for the whole key loop; K and V tiles of 64 keys are
// double-buffered in shared memory and fetched with cp.async one tile ahead:
//
//   for each key tile n:        S = Q K[n]^T             (mma, 16 x 64 per warp)
//                               mask S (key bounds, causal diagonal)
//                               online softmax: P = exp2(S - m), rescale O
//                               O += P V[n]              (mma, P reused from registers as A)
//   O /= rowsum; lse = m + log(rowsum)
//
// Shared memory per block: Q (64 x D) + 2 x K (64 x D) + 2 x V (64 x D), each row padded by
// 16 bytes (see FwdTile::kPitch). Fragment layouts: DESIGN.md §5.
#pragma once

#include <cmath>

#include "../simt/simt.h"
#include "online_softmax.cuh"
#include "params.h"

namespace attn {

template <int D>
struct FwdTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;  // query rows per block: 16 per warp
  // Keys per tile. At D = 256 the O accumulators alone take 128 registers per thread; 32-key
  // tiles halve S's share so that nothing spills.
  static constexpr int kBlockN = D <= 128 ? 64 : 32;
  // Q's A fragments take D / 4 registers per thread; above D = 128 they are re-read from
  // shared memory every key tile instead, to leave room for the O accumulators.
  static constexpr bool kQInRegisters = D <= 128;
  // Row pitch in elements. A 16-byte pad shifts consecutive rows by 4 banks, so the 8 rows an
  // ldmatrix phase reads (16 bytes each) cover all 32 banks once: no bank conflicts.
  static constexpr int kPitch = D + 8;
  static constexpr int kQElems = kBlockM * kPitch;
  static constexpr int kKVElems = kBlockN * kPitch;
  static constexpr int kSmemElems = kQElems + 4 * kKVElems;  // Q, K[2], V[2]
  static_assert(D % 32 == 0, "K fragments are read two 16-wide k-steps per ldmatrix.x4");
};

// Copies a (kRows x D) tile from global memory (rows `row_stride` elements apart) into shared
// memory (rows kPitch apart) with cp.async; rows >= rows_valid are zero-filled.
template <int D, int kRows, typename T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t row_stride, int rows_valid) {
  using Tile = FwdTile<D>;
  constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
  static_assert(kRows * kChunksPerRow % Tile::kThreads == 0, "every thread copies the same number of chunks");
  SIMT_UNROLL
  for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += Tile::kThreads) {
    const int row = c / kChunksPerRow;
    const int col = c % kChunksPerRow * 8;
    const bool valid = row < rows_valid;
    simt::cp_async_16(smem + row * Tile::kPitch + col, valid ? gmem + row * row_stride + col : gmem, valid);
  }
}

// Sets to -inf the scores of keys past the end (j >= seqlen_k) and, with causal, past the
// diagonal (j > i + offset). s holds the warp's 16 x kBlockN tile starting at (row0, col0).
template <int kScoreTiles>
__device__ __forceinline__ void apply_mask(float (&s)[kScoreTiles][4], int row0, int col0, int seqlen_k, bool causal,
                                           int offset) {
  const int lane = simt::lane_id();
  SIMT_UNROLL
  for (int j = 0; j < kScoreTiles; ++j) {
    SIMT_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int row = row0 + lane / 4 + (i >= 2 ? 8 : 0);
      const int col = col0 + 8 * j + 2 * (lane % 4) + (i & 1);
      if (col >= seqlen_k || (causal && col > row + offset)) s[j][i] = -INFINITY;
    }
  }
}

template <int D, typename T>
__global__ void __launch_bounds__(FwdTile<D>::kThreads) fwd_kernel(const FwdParams p) {
  using Tile = FwdTile<D>;
  constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kPitch = Tile::kPitch;
  constexpr int kKSteps = D / 16;            // k-steps of S = Q K^T
  constexpr int kScoreTiles = kBlockN / 8;   // n-tiles of S
  constexpr int kOutTiles = D / 8;           // n-tiles of O
  constexpr int kPVSteps = kBlockN / 16;     // k-steps of O += P V

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
    T* q_smem = smem;                                     // (kBlockM, kPitch)
    T* k_smem = q_smem + Tile::kQElems;                   // (2, kBlockN, kPitch): double buffer
    T* v_smem = k_smem + 2 * Tile::kKVElems;              // (2, kBlockN, kPitch)

    // cp.async groups, in commit order: {Q, K[0]}, {V[0]}, then {K[n+1]}, {V[n+1]} per tile.
    load_tile_async<D, kBlockM>(q_smem, q + m0 * p.q_row_stride, p.q_row_stride, p.seqlen_q - m0);
    load_tile_async<D, kBlockN>(k_smem, k, p.k_row_stride, p.seqlen_k);
    simt::cp_async_commit();
    load_tile_async<D, kBlockN>(v_smem, v, p.v_row_stride, p.seqlen_k);
    simt::cp_async_commit();

    // A fragments of the warp's 16 x D slice of Q: all k-steps, loaded once (kQInRegisters), or
    // the two k-steps in use, reloaded from shared memory every tile.
    constexpr bool kQInRegisters = Tile::kQInRegisters;
    uint32_t q_frag[kQInRegisters ? kKSteps : 2][4];
    // Lanes 0-7 / 8-15 / 16-23 / 24-31 address rows 0-7 / 8-15 / 0-7 / 8-15 of the warp's
    // slice, at columns +0 / +0 / +8 / +8: the four 8x8 blocks of an A fragment.
    const T* q_row = q_smem + (16 * warp + lane % 8 + 8 * (lane / 8 % 2)) * kPitch + 8 * (lane / 16);
    const float scale_log2 = p.softmax_scale * kLog2e;

    for (int n = 0; n < n_tiles; ++n) {
      const int n0 = n * kBlockN;
      T* k_tile = k_smem + n % 2 * Tile::kKVElems;
      T* v_tile = v_smem + n % 2 * Tile::kKVElems;
      T* k_next = k_smem + (n + 1) % 2 * Tile::kKVElems;
      T* v_next = v_smem + (n + 1) % 2 * Tile::kKVElems;
      const bool prefetch = n + 1 < n_tiles;
      simt::cp_async_wait<1>();  // K[n] (and Q) landed; V[n] may still be in flight
      __syncthreads();

      if (kQInRegisters && n == 0) {
        SIMT_UNROLL
        for (int kk = 0; kk < kKSteps; ++kk) simt::ldmatrix_x4(q_frag[kQInRegisters ? kk : 0], q_row + 16 * kk);
      }

      // S = Q K^T: (16 x D) x (D x kBlockN) per warp, two k-steps at a time.
      float s[kScoreTiles][4] = {};
      SIMT_UNROLL
      for (int kk = 0; kk < kKSteps; kk += 2) {
        const int qa = kQInRegisters ? kk : 0;
        if (!kQInRegisters) {
          simt::ldmatrix_x4(q_frag[0], q_row + 16 * kk);
          simt::ldmatrix_x4(q_frag[1], q_row + 16 * (kk + 1));
        }
        SIMT_UNROLL
        for (int j = 0; j < kScoreTiles; ++j) {
          // Lane l addresses key 8j + l % 8 at column 16kk + 8 * (l / 8): the B fragments of
          // k-steps kk and kk + 1.
          uint32_t kb[4];
          simt::ldmatrix_x4(kb, k_tile + (8 * j + lane % 8) * kPitch + 16 * kk + 8 * (lane / 8));
          const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
          simt::mma_m16n8k16<T>(s[j], q_frag[qa], b0, s[j]);
          simt::mma_m16n8k16<T>(s[j], q_frag[qa + 1], b1, s[j]);
        }
      }

      // Fetch K[n+1] into the other buffer; every warp finished reading it (as K[n-1]) before
      // the barrier above.
      if (prefetch) {
        load_tile_async<D, kBlockN>(k_next, k + (n0 + kBlockN) * p.k_row_stride, p.k_row_stride,
                                    p.seqlen_k - n0 - kBlockN);
        simt::cp_async_commit();
      }

      SIMT_UNROLL
      for (int j = 0; j < kScoreTiles; ++j) {
        SIMT_UNROLL
        for (int i = 0; i < 4; ++i) s[j][i] *= scale_log2;
      }
      const bool tile_crosses_edge = n0 + kBlockN > p.seqlen_k;
      const bool tile_crosses_diagonal = p.causal && n0 + kBlockN - 1 > warp_row0 + p.diagonal_offset;
      if (tile_crosses_edge || tile_crosses_diagonal) {
        apply_mask(s, warp_row0, n0, p.seqlen_k, p.causal, p.diagonal_offset);
      }
      online_softmax_update(rows, s, o);

      if (prefetch) {
        simt::cp_async_wait<1>();  // V[n] landed; K[n+1] may still be in flight
      } else {
        simt::cp_async_wait<0>();
      }
      __syncthreads();

      // O += P V: (16 x kBlockN) x (kBlockN x D) per warp; P's C fragments are A fragments.
      SIMT_UNROLL
      for (int kk = 0; kk < kPVSteps; ++kk) {
        const uint32_t pa[4] = {simt::pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                                simt::pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                simt::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                simt::pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        // Lanes address keys 16kk + l % 8 (+8 for l / 8 odd) at columns 8j (+8 for l >= 16);
        // .trans turns the row-major V blocks into B fragments for d-tiles j and j + 1.
        const T* row = v_tile + (16 * kk + lane % 8 + 8 * (lane / 8 % 2)) * kPitch + 8 * (lane / 16);
        SIMT_UNROLL
        for (int j = 0; j < kOutTiles; j += 2) {
          uint32_t vb[4];
          simt::ldmatrix_x4_trans(vb, row + 8 * j);
          const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
          simt::mma_m16n8k16<T>(o[j], pa, b0, o[j]);
          simt::mma_m16n8k16<T>(o[j + 1], pa, b1, o[j + 1]);
        }
      }

      // Fetch V[n+1]; every warp finished reading it (as V[n-1]) before this tile's first barrier.
      if (prefetch) {
        load_tile_async<D, kBlockN>(v_next, v + (n0 + kBlockN) * p.v_row_stride, p.v_row_stride,
                                    p.seqlen_k - n0 - kBlockN);
        simt::cp_async_commit();
      }
    }
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
  using Tile = FwdTile<D>;
  const simt::Dim3 grid((p.seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM, p.n_heads, p.batch);
  const size_t smem_bytes = Tile::kSmemElems * sizeof(T);
  simt::launch(fwd_kernel<D, T>, grid, simt::Dim3(Tile::kThreads), smem_bytes, stream, p);
}

}  // namespace attn
