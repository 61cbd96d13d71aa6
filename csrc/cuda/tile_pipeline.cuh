// tile_pipeline.cuh — the tensor-core key loop shared by the forward and decode kernels.
//
// A block of 4 warps owns a 64-row query tile (16 rows per warp) held in shared memory. Key
// tiles of kBlockN rows of K and V are double-buffered in shared memory and fetched with
// cp.async one tile ahead:
//
//   for each key tile n:        S = Q K[n]^T             (mma, 16 x kBlockN per warp)
//                               scores(S): scale, mask   (caller's functor)
//                               online softmax: P = exp2(S - m), rescale O
//                               O += P V[n]              (mma, P reused from registers as A)
//
// Where the rows come from is the caller's business: each tile loader takes a functor giving the
// global address of a row (a query of the packed tile, a key of a contiguous or paged cache), so
// the same loop serves strided tensors and page tables. Fragment layouts: docs/design.md §5.
#pragma once

#include <cmath>

#include "../simt/simt.h"
#include "online_softmax.cuh"

namespace attn {

template <int D>
struct MmaTile {
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

// Copies kRows rows of D elements into shared memory (rows kPitch apart) with cp.async, by
// kThreads threads; row_ptr(r) is the global address of row r, asked only for r < rows_valid
// (>= 1); the other rows are zero-filled.
template <int D, int kRows, int kThreads, int kPitch, typename T, typename RowPtr>
__device__ __forceinline__ void load_rows_async(T* smem, RowPtr row_ptr, int rows_valid) {
  constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
  static_assert(kRows * kChunksPerRow % kThreads == 0, "every thread copies the same number of chunks");
  SIMT_UNROLL
  for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += kThreads) {
    const int row = c / kChunksPerRow;
    const int col = c % kChunksPerRow * 8;
    const bool valid = row < rows_valid;
    // An invalid chunk reads nothing (src-size 0); row 0's address stands in as its source.
    simt::cp_async_16(smem + row * kPitch + col, row_ptr(valid ? row : 0) + col, valid);
  }
}

// Calls f(score, row, col) on each score of a warp's 16 x (8 * kScoreTiles) accumulator tile whose
// first element is (row0, col0), with the mma C layout: lane l holds rows row0 + l / 4 and
// row0 + l / 4 + 8, columns 8j + 2 (l % 4) and the next one.
template <int kScoreTiles, typename F>
__device__ __forceinline__ void for_each_score(float (&s)[kScoreTiles][4], int row0, int col0, F f) {
  const int lane = simt::lane_id();
  SIMT_UNROLL
  for (int j = 0; j < kScoreTiles; ++j) {
    SIMT_UNROLL
    for (int i = 0; i < 4; ++i) {
      f(s[j][i], row0 + lane / 4 + (i >= 2 ? 8 : 0), col0 + 8 * j + 2 * (lane % 4) + (i & 1));
    }
  }
}

// Attends the block's query tile (already being copied into q_smem by the caller's first, not yet
// committed cp.async group) to the key tiles starting at keys key_begin, key_begin + kBlockN, ...
// (n_tiles of them; keys >= seqlen_k are zero-filled and must be masked by `scores`).
//
// k_row(j) / v_row(j) give the global address of key j. scores(s, n0) turns a warp's raw Q K^T
// tile for keys n0.. into log2-domain scores with -inf where masked (it knows the warp's rows).
// A warp with `active` false (no valid query row) only helps with copies and barriers.
// o and rows accumulate the unnormalized output and the running max/sum (online_softmax.cuh).
template <int D, typename T, typename KRow, typename VRow, typename Scores>
__device__ __forceinline__ void attend_key_tiles(T* smem, int key_begin, int n_tiles, int seqlen_k, KRow k_row,
                                                 VRow v_row, Scores scores, bool active,
                                                 float (&o)[D / 8][4], RowState& rows) {
  using Tile = MmaTile<D>;
  constexpr int kBlockN = Tile::kBlockN, kPitch = Tile::kPitch, kThreads = Tile::kThreads;
  constexpr int kKSteps = D / 16;            // k-steps of S = Q K^T
  constexpr int kScoreTiles = kBlockN / 8;   // n-tiles of S
  constexpr int kOutTiles = D / 8;           // n-tiles of O
  constexpr int kPVSteps = kBlockN / 16;     // k-steps of O += P V
  constexpr bool kQInRegisters = Tile::kQInRegisters;

  T* q_smem = smem;                          // (kBlockM, kPitch)
  T* k_smem = q_smem + Tile::kQElems;        // (2, kBlockN, kPitch): double buffer
  T* v_smem = k_smem + 2 * Tile::kKVElems;   // (2, kBlockN, kPitch)
  const int warp = simt::warp_id(), lane = simt::lane_id();

  // Copies keys key_begin + n * kBlockN + 0..kBlockN-1 of K or V; those >= seqlen_k are zero-filled.
  auto load_key_tile = [&](T* dst, int n, auto row_of) {
    const int n0 = key_begin + n * kBlockN;
    load_rows_async<D, kBlockN, kThreads, kPitch>(dst, [=](int r) { return row_of(n0 + r); }, seqlen_k - n0);
  };

  // cp.async groups, in commit order: {Q, K[0]}, {V[0]}, then {K[n+1]}, {V[n+1]} per tile.
  load_key_tile(k_smem, 0, k_row);
  simt::cp_async_commit();
  load_key_tile(v_smem, 0, v_row);
  simt::cp_async_commit();

  // A fragments of the warp's 16 x D slice of Q: all k-steps, loaded once (kQInRegisters), or
  // the two k-steps in use, reloaded from shared memory every tile.
  uint32_t q_frag[kQInRegisters ? kKSteps : 2][4];
  // Lanes 0-7 / 8-15 / 16-23 / 24-31 address rows 0-7 / 8-15 / 0-7 / 8-15 of the warp's
  // slice, at columns +0 / +0 / +8 / +8: the four 8x8 blocks of an A fragment.
  const T* q_row = q_smem + (16 * warp + lane % 8 + 8 * (lane / 8 % 2)) * kPitch + 8 * (lane / 16);

  for (int n = 0; n < n_tiles; ++n) {
    const int n0 = key_begin + n * kBlockN;
    T* k_tile = k_smem + n % 2 * Tile::kKVElems;
    T* v_tile = v_smem + n % 2 * Tile::kKVElems;
    const bool prefetch = n + 1 < n_tiles;
    simt::cp_async_wait<1>();  // K[n] (and Q) landed; V[n] may still be in flight
    __syncthreads();

    float s[kScoreTiles][4] = {};
    if (active) {
      if (kQInRegisters && n == 0) {
        SIMT_UNROLL
        for (int kk = 0; kk < kKSteps; ++kk) simt::ldmatrix_x4(q_frag[kQInRegisters ? kk : 0], q_row + 16 * kk);
      }
      // S = Q K^T: (16 x D) x (D x kBlockN) per warp, two k-steps at a time.
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
    }

    // Fetch K[n+1] into the other buffer; every warp finished reading it (as K[n-1]) before
    // the barrier above.
    if (prefetch) {
      load_key_tile(k_smem + (n + 1) % 2 * Tile::kKVElems, n + 1, k_row);
      simt::cp_async_commit();
    }

    if (active) {
      scores(s, n0);
      online_softmax_update(rows, s, o);
    }

    if (prefetch) {
      simt::cp_async_wait<1>();  // V[n] landed; K[n+1] may still be in flight
    } else {
      simt::cp_async_wait<0>();
    }
    __syncthreads();

    if (active) {
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
    }

    // Fetch V[n+1]; every warp finished reading it (as V[n-1]) before this tile's first barrier.
    if (prefetch) {
      load_key_tile(v_smem + (n + 1) % 2 * Tile::kKVElems, n + 1, v_row);
      simt::cp_async_commit();
    }
  }
}

}  // namespace attn
