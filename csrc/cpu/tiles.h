// Tile sizes per instruction set (included after vec.h, inside the instruction set's namespace).
//
// Forward tiles hold scores transposed, S^T (keys x queries), so that query rows run along
// vector lanes: the row max, row sum and rescale of the online softmax become plain vertical
// vector ops, and both products are broadcast-FMA outer products that read K and V rows in
// place (no packing). A query tile of BLOCK_M rows is cut into blocks of VECS_PER_BLOCK vectors;
// a micro-kernel keeps MICRO_ROWS (keys for S^T, features for O^T) x VECS_PER_BLOCK accumulators
// in registers. Measured single-thread at B=1, H=8, D=64, N=2048 fp32 on a Zen 5 core:
//   AVX-512 (32 registers): 4 x 4 = 16 accumulators + 4 loads + 1 broadcast; ~170-190 GFLOP/s
//                           (4 x 6 and 8 x 2 measured the same within noise).
//   AVX2    (16 registers): 6 x 2 = 12 accumulators + 2 loads + 1 broadcast; ~85 GFLOP/s, where
//                           4 x 3 (3 loads per 4 broadcasts) reached ~62.
//   SSE2/NEON baseline:     4 x 2 =  8 accumulators + 2 loads + 1 broadcast.
// BLOCK_N keys per tile, a multiple of MICRO_ROWS: S^T is BLOCK_N x BLOCK_M fp32 (16 KiB at
// 64 x 64) and, with Q^T and O^T (D x BLOCK_M each, 16 KiB at D = 64), stays in L1 / L2.
#if ATTN_CPU_VEC_BYTES == 64
constexpr int VECS_PER_BLOCK = 4;
constexpr int BLOCK_M = 64;
constexpr int MICRO_ROWS = 4;
constexpr int BLOCK_N = 64;
#elif ATTN_CPU_VEC_BYTES == 32
constexpr int VECS_PER_BLOCK = 2;
constexpr int BLOCK_M = 48;
constexpr int MICRO_ROWS = 6;
constexpr int BLOCK_N = 60;
#else
constexpr int VECS_PER_BLOCK = 2;
constexpr int BLOCK_M = 32;
constexpr int MICRO_ROWS = 4;
constexpr int BLOCK_N = 64;
#endif
constexpr int VECS_M = BLOCK_M / W;  // vectors per query tile
static_assert(BLOCK_M % (VECS_PER_BLOCK * W) == 0, "query tile must be whole micro-kernel blocks");
static_assert(BLOCK_N % MICRO_ROWS == 0, "key tile must be whole micro-kernel rows");

// Decode: keys per tile (scores of one tile per query row stay in L1), and query rows per
// micro-kernel (each K or V vector loaded once feeds DECODE_ROWS FMAs).
constexpr int DECODE_BLOCK_N = 64;
constexpr int DECODE_ROWS = 4;
static_assert(DECODE_BLOCK_N % W == 0, "decode key tile must be whole vectors");
