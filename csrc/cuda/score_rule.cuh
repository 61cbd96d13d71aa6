// score_rule.cuh — what a raw q.k product becomes before the softmax, shared by every kernel.
//
// A query sits at key position `pos` (its row plus the diagonal offset: Sk - Sq bottom-right, 0
// top-left) and sees keys in [pos - window_left, pos + window_right] that exist (< seqlen_k);
// causal is window_right = 0, and "unbounded" arrives as a width no sequence reaches. Scores are
// in the log2 domain (exp2 does the exponentials):
//   s = q.k * scale * log2(e)                         or, with softcap c,
//   s = c * tanh(q.k * scale / c) * log2(e);          then ALiBi: s -= slope * log2(e) * |pos - key|
#pragma once

#include <cmath>

#include "../simt/simt.h"
#include "online_softmax.cuh"

namespace attn {

struct ScoreRule {
  float scale_log2;
  float softcap_log2;       // 0 without softcap
  float softcap_inv_scale;  // scale / softcap
  int seqlen_k, window_left, window_right;

  __device__ __forceinline__ ScoreRule(float softmax_scale, float softcap, int seqlen_k_, int left, int right)
      : scale_log2(softmax_scale * kLog2e),
        softcap_log2(softcap > 0.f ? softcap * kLog2e : 0.f),
        softcap_inv_scale(softcap > 0.f ? softmax_scale / softcap : 0.f),
        seqlen_k(seqlen_k_),
        window_left(left),
        window_right(right) {}

  __device__ __forceinline__ bool visible(int pos, int key) const {
    return key < seqlen_k && key >= pos - window_left && key <= pos + window_right;
  }

  // Scale (or softcap) and ALiBi (slope_log2 = slope * log2(e); 0 without ALiBi), no masking.
  template <bool kMods>
  __device__ __forceinline__ float transform(float qk, float slope_log2, int pos, int key) const {
    if (!kMods) return qk * scale_log2;
    float s = softcap_log2 > 0.f ? softcap_log2 * tanhf(qk * softcap_inv_scale) : qk * scale_log2;
    return s - slope_log2 * fabsf(static_cast<float>(pos - key));
  }

  // The log2-domain score, -inf where the key is invisible.
  template <bool kMods>
  __device__ __forceinline__ float score(float qk, float slope_log2, int pos, int key) const {
    return visible(pos, key) ? transform<kMods>(qk, slope_log2, pos, key) : -INFINITY;
  }

  // Keys [lo, hi) that some query at positions first_pos..last_pos sees (lo >= hi: none).
  __device__ __forceinline__ void key_range(int first_pos, int last_pos, int& lo, int& hi) const {
    lo = first_pos - window_left > 0 ? first_pos - window_left : 0;
    hi = last_pos + window_right + 1 < seqlen_k ? last_pos + window_right + 1 : seqlen_k;
  }

  // Whether every query at positions first_pos..last_pos sees every key in [k0, k1).
  __device__ __forceinline__ bool all_visible(int first_pos, int last_pos, int k0, int k1) const {
    return k1 <= seqlen_k && k0 >= last_pos - window_left && k1 - 1 <= first_pos + window_right;
  }
};

}  // namespace attn
