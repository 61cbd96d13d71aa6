// online_softmax.cuh — running max / running sum over mma accumulator rows.
//
// A thread's mma.m16n8k16 accumulators (C layout, docs/design.md §5) cover two rows of the warp's
// 16-row tile, g = lane / 4 (elements 0, 1) and g + 8 (elements 2, 3), and two columns per
// 8-column n-tile; the four lanes of a quad (same g) hold the rest of each row. Scores are kept
// in the log2 domain (scaled by softmax_scale * log2(e)) so that exp2 does the exponentials.
#pragma once

#include <cmath>

#include "../simt/simt.h"

namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Max (log2 domain) and partial sum of each of a thread's two rows. The sum is per thread;
// the quad's partial sums are added once, in finish().
struct RowState {
  float max[2];
  float sum[2];
};

__device__ __forceinline__ void init_rows(RowState& rows) {
  SIMT_UNROLL
  for (int r = 0; r < 2; ++r) {
    rows.max[r] = -INFINITY;
    rows.sum[r] = 0.f;
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, simt::shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, simt::shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += simt::shfl_xor_sync(0xffffffffu, x, 1);
  return x + simt::shfl_xor_sync(0xffffffffu, x, 2);
}

// s: (N/8 n-tiles) x 4 scores in the log2 domain, masked entries -inf. Replaces s by
// p = exp2(s - new_max), folds it into `rows`, and rescales the output accumulators o
// ((D/8) n-tiles x 4, same rows) by exp2(old_max - new_max).
template <int kScoreTiles, int kOutTiles>
__device__ __forceinline__ void online_softmax_update(RowState& rows, float (&s)[kScoreTiles][4],
                                                      float (&o)[kOutTiles][4]) {
  SIMT_UNROLL
  for (int r = 0; r < 2; ++r) {
    float tile_max = -INFINITY;
    SIMT_UNROLL
    for (int j = 0; j < kScoreTiles; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    const float new_max = fmaxf(rows.max[r], quad_max(tile_max));
    // A row that has seen only masked keys keeps max -inf; subtracting 0 keeps exp2 at 0, not NaN.
    const float shift = new_max == -INFINITY ? 0.f : new_max;
    const float alpha = exp2f(rows.max[r] - shift);
    float tile_sum = 0.f;
    SIMT_UNROLL
    for (int j = 0; j < kScoreTiles; ++j) {
      SIMT_UNROLL
      for (int c = 0; c < 2; ++c) {
        s[j][2 * r + c] = exp2f(s[j][2 * r + c] - shift);
        tile_sum += s[j][2 * r + c];
      }
    }
    rows.sum[r] = rows.sum[r] * alpha + tile_sum;
    rows.max[r] = new_max;
    SIMT_UNROLL
    for (int j = 0; j < kOutTiles; ++j) {
      o[j][2 * r] *= alpha;
      o[j][2 * r + 1] *= alpha;
    }
  }
}

// Divides o by each row's sum and returns the natural-log LSE of both rows (-inf, with o = 0,
// for a row that saw no key).
template <int kOutTiles>
__device__ __forceinline__ void finish_rows(RowState& rows, float (&o)[kOutTiles][4], float (&lse)[2]) {
  SIMT_UNROLL
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(rows.sum[r]);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    lse[r] = sum > 0.f ? (rows.max[r] + log2f(sum)) * kLn2 : -INFINITY;
    SIMT_UNROLL
    for (int j = 0; j < kOutTiles; ++j) {
      o[j][2 * r] *= inv;
      o[j][2 * r + 1] *= inv;
    }
  }
}

}  // namespace attn
