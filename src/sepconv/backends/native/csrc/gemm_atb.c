/* out[M][N] = A^T B for A: [P][M] and B: [P][N], float32, row-major with leading dimensions (sepconv.train_engine).
 *
 * The weight gradient of a 1x1 convolution in channels-last memory: A = the output gradient's pixels (P x Cout),
 * B = the input's pixels (P x Cin), out = grad_weight (Cout x Cin). P (all pixels of the batch) is large and M, N
 * are channel counts, so the reduction runs over the long dimension. Register blocks of MB rows x 32 columns of
 * `out` (24 AVX-512 accumulators) are kept in registers while a chunk of PC pixels streams past: per pixel two
 * vector loads of B and MB broadcasts of A feed 2 * MB FMAs. Chunks of pixels are sized so that A's and B's rows
 * for the chunk stay in the L2 cache while every register block of `out` sweeps them. Threads (OpenMP, PyTorch's
 * libgomp when built by sepconv) split the pixels, each summing into its own copy of `out`, and the copies are
 * added; where the pixels are few and the blocks many they own disjoint register blocks of `out` instead.
 * AVX-512 intrinsics where the compiler targets AVX-512F, else AVX2 + FMA or NEON vectors (simd.h: 16-column
 * blocks of 6 rows), else portable loops.
 */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "simd.h"
#include "wgrad_steps.h"

#define MB 12 /* rows of out per register block */
#define NB 32 /* columns of out per register block (two AVX-512 vectors) */
#ifndef ATB_SPLIT_PIXELS
#define ATB_SPLIT_PIXELS 1024 /* pixels per thread from which threads split the pixels, not out's blocks */
#endif

#ifdef SEPCONV_AVX512
/* out[m0 : m0 + R][n0 : n0 + NB] += sum over p in [p0, p1) of A[p][m] B[p][n], for R <= MB rows known at compile
 * time (every call passes a constant): the accumulators are then indexed by constants only and stay in registers.
 * With R a runtime value the compiler kept them in memory, so a partial block (64 = 5 x 12 + 4 rows of out) cost
 * as much as several full ones. */
static inline __attribute__((always_inline)) void atb_rows(const float *A, long lda, const float *B, long ldb,
                                                           float *o, long ldo, long p0, long p1, int m0, int n0,
                                                           int fresh, const int R) {
    __m512 acc[MB][2];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
        acc[r][0] = fresh ? _mm512_setzero_ps() : _mm512_loadu_ps(o + (size_t)r * ldo);
        acc[r][1] = fresh ? _mm512_setzero_ps() : _mm512_loadu_ps(o + (size_t)r * ldo + 16);
    }
    for (long p = p0; p < p1; ++p) {
        const float *b = B + (size_t)p * ldb + n0, *a = A + (size_t)p * lda + m0;
        __m512 v0 = _mm512_loadu_ps(b), v1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) {
            __m512 s = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(s, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(s, v1, acc[r][1]);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
        _mm512_storeu_ps(o + (size_t)r * ldo, acc[r][0]);
        _mm512_storeu_ps(o + (size_t)r * ldo + 16, acc[r][1]);
    }
}

/* atb_rows for a block of fewer than NB columns (a channel count that is not a multiple of 32): NV (1 or 2, a
 * constant) vectors of columns, the last masked (k0 for the first vector, k1 for the second). Constant R and NV keep
 * the accumulators in registers, as in atb_rows; the loop of runtime length it replaces kept them in memory, and
 * such a block cost several times a whole one (docs/design-notes.md). */
static inline __attribute__((always_inline)) void atb_rows_part(const float *A, long lda, const float *B, long ldb,
                                                                float *o, long ldo, long p0, long p1, int m0,
                                                                int n0, int fresh, const int R, const int NV,
                                                                __mmask16 k0, __mmask16 k1) {
    __m512 acc[MB][2];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
        acc[r][0] = fresh ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k0, o + (size_t)r * ldo);
        if (NV == 2) acc[r][1] = fresh ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k1, o + (size_t)r * ldo + 16);
    }
    for (long p = p0; p < p1; ++p) {
        const float *b = B + (size_t)p * ldb + n0, *a = A + (size_t)p * lda + m0;
        __m512 v0 = _mm512_maskz_loadu_ps(k0, b), v1 = NV == 2 ? _mm512_maskz_loadu_ps(k1, b + 16) : v0;
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) {
            __m512 s = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(s, v0, acc[r][0]);
            if (NV == 2) acc[r][1] = _mm512_fmadd_ps(s, v1, acc[r][1]);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
        _mm512_mask_storeu_ps(o + (size_t)r * ldo, k0, acc[r][0]);
        if (NV == 2) _mm512_mask_storeu_ps(o + (size_t)r * ldo + 16, k1, acc[r][1]);
    }
}
#endif

#ifdef SEPCONV_VEC
#define MB_V 6           /* rows of out per vector register block */
#define NSUB_A (16 / VW) /* vectors per 16-column sub-block */
/* out[m0 : m0 + R][n0 : n0 + nc] (+)= sum over p in [p0, p1) of A[p][m] B[p][n] (= with `fresh`), R <= MB_V a
 * constant after inlining: MB_V x NSUB_A accumulators (12 of AVX2's 16 registers, 24 of NEON's 32) stay in
 * registers. nc <= 16: whole vectors of B are read (its rows hold 16 columns from n0, or it is a packed sliver,
 * zero padded), columns past nc are computed and not stored. Only R columns of A are read. */
SEPCONV_INLINE void atb_rows_v(const float *A, long lda, const float *B, long ldb, float *o, long ldo, long p0,
                               long p1, int m0, int n0, int nc, int fresh, const int R) {
    vf acc[MB_V][NSUB_A];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int s = 0; s < NSUB_A; ++s)
            acc[r][s] = fresh ? vzero() : vload_n(o + (size_t)r * ldo + s * VW, nc - s * VW);
    for (long p = p0; p < p1; ++p) {
        const float *b = B + (size_t)p * ldb + n0, *a = A + (size_t)p * lda + m0;
        vf v[NSUB_A];
#pragma GCC unroll 4
        for (int s = 0; s < NSUB_A; ++s) v[s] = vload(b + s * VW);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            vf x = vset1(a[r]);
#pragma GCC unroll 4
            for (int s = 0; s < NSUB_A; ++s) acc[r][s] = vfma(x, v[s], acc[r][s]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int s = 0; s < NSUB_A; ++s) vstore_n(o + (size_t)r * ldo + s * VW, acc[r][s], nc - s * VW);
}
#endif

#ifdef SEPCONV_VEC
#define PC_V 256        /* pixels per packed chunk: a packed 16-column sliver of B (16 KiB) stays in L1 */
#define PACK_A_MIN 256  /* A's row stride (floats) from which its columns are packed too (see atb_range_packed) */

/* out[0 : R][0 : nc] (+)= sum over n pixels of a[p * sa + r] b[p][0 : 16]: a packed sliver of B ([n][16]) against
 * a packed sliver of A ([n][MB_V], sa = MB_V) or A itself (sa = lda), R <= MB_V and nc <= 16 */
static void atb_packed_block(const float *a, long sa, const float *b, long n, float *o, long ldo, int R, int nc,
                             int fresh) {
    switch (R) {
#define ATB_PACKED(K) case K: atb_rows_v(a, sa, b, 16, o, ldo, 0, n, 0, 0, nc, fresh, K); break;
        ATB_PACKED(6) ATB_PACKED(5) ATB_PACKED(4) ATB_PACKED(3) ATB_PACKED(2) ATB_PACKED(1)
#undef ATB_PACKED
        default: break;
    }
}

/* The vector path of sepconv_atb_range. For each chunk of at most PC_V pixels, B's columns [na, nb) (those of the
 * blocks) are packed into slivers of 16 ([n][16] each, zero padded), and where A's rows are PACK_A_MIN floats or
 * more apart its columns [ma, mb) into slivers of MB_V ([n][MB_V]); then each sliver of B, held in L1, meets every
 * row sliver of A the blocks pair it with, while the next chunk's rows are fetched into L2. Unpacked (atb_block),
 * each 6 x 16 register block reads a line of B per pixel from L2, four times per 12 x 32 block and chunk; A's rows,
 * when 1 KiB or more apart, fall into few L1 sets, so that each sliver's pass reloads them from L2 (packing A costs
 * more than it saves where its rows are shorter). Returns 0, or -1 (nothing written) when the packing buffer could
 * not be allocated or the blocks are better run unpacked. */
static int atb_range_packed(const float *A, long lda, const float *B, long ldb, float *out, long ldo, int M, int N,
                            long p0, long p1, long pc, long blk_begin, long blk_end, int fresh) {
    if (p1 <= p0 && !fresh) return 0;
    int mblocks = (M + MB - 1) / MB;
    /* the rows and columns of out the blocks touch */
    long nb_first = blk_begin / mblocks, nb_last = (blk_end - 1) / mblocks;
    int ma = nb_first == nb_last ? (int)(blk_begin % mblocks) * MB : 0;
    int mb = nb_first == nb_last ? (int)((blk_end - 1) % mblocks) * MB + MB : M;
    mb = mb < M ? mb : M;
    int na = (int)nb_first * NB, nb = (int)nb_last * NB + NB < N ? (int)nb_last * NB + NB : N;
    int pack_a = lda >= PACK_A_MIN;
    int aslivers = (mb - ma + MB_V - 1) / MB_V, bslivers = (nb - na + 15) / 16;
    /* whole slivers of B, A unpacked, and B's slivers few or met by few row slivers: packing B costs more than the
     * unpacked blocks' extra reads of it (docs/design-notes.md: 64 x 32 with two threads, each packing the same B;
     * 3 x 64, where copying B takes as long as the products) */
    if (!pack_a && (nb - na) % 16 == 0 && (bslivers <= 2 || aslivers < 4)) return -1;
    long n_all = p1 - p0, chunks = 1;
    if (pc > PC_V || n_all > pc) { /* chunks of at most min(pc, PC_V) pixels, of equal size */
        long cap = pc < PC_V ? pc : PC_V;
        chunks = (n_all + cap - 1) / cap;
    }
    long csize = n_all > 0 ? (n_all + chunks - 1) / chunks : 0;
    size_t afl = (size_t)csize * MB_V, bfl = (size_t)csize * 16; /* floats per sliver (multiples of 16) */
    size_t afloats = pack_a ? aslivers * afl : 0;
    float *buf = (float *)aligned_alloc(64, ((afloats + bslivers * bfl) * sizeof(float) + 63) / 64 * 64 + 64);
    if (!buf) return -1;
    float *pa = buf, *pb = buf + afloats;
    for (long c0 = p0, k = 0; k < chunks; ++k, c0 += csize) {
        long n = p1 - c0 < csize ? p1 - c0 : csize;
        n = n > 0 ? n : 0;
        for (long p = 0; p < n; ++p) { /* pack the chunk's rows of A and B */
            const float *ar = A + (size_t)(c0 + p) * lda, *br = B + (size_t)(c0 + p) * ldb;
            for (int s = 0; pack_a && s < aslivers; ++s) {
                float *d = pa + s * afl + (size_t)p * MB_V;
                int m = ma + s * MB_V;
                if (mb - m >= MB_V) memcpy(d, ar + m, sizeof(float) * MB_V);
                else
                    for (int r = 0; r < MB_V; ++r) d[r] = m + r < mb ? ar[m + r] : 0.f;
            }
            for (int s = 0; s < bslivers; ++s) {
                float *d = pb + s * bfl + (size_t)p * 16;
                int j = na + s * 16, w = nb - j < 16 ? nb - j : 16;
                if (w == 16)
                    for (int q = 0; q < 16; q += VW) vstore(d + q, vload(br + j + q));
                else
                    for (int q = 0; q < 16; ++q) d[q] = q < w ? br[j + q] : 0.f;
            }
        }
        /* the next chunk's rows of A and B, fetched into L2 while this one computes (spread over its blocks) */
        const char *pfa = NULL, *pfa_end = NULL, *pfb = NULL, *pfb_end = NULL;
        long pf_per = 0;
        if (k + 1 < chunks) {
            long c1 = c0 + csize, n1 = p1 - c1 < csize ? p1 - c1 : csize;
            pfa = (const char *)(A + (size_t)c1 * lda + ma);
            pfa_end = (const char *)(A + (size_t)(c1 + n1 - 1) * lda + mb);
            pfb = (const char *)(B + (size_t)c1 * ldb + na);
            pfb_end = (const char *)(B + (size_t)(c1 + n1 - 1) * ldb + nb);
            pf_per = ((pfa_end - pfa) + (pfb_end - pfb)) / 64 / ((long)aslivers * bslivers) + 1;
        }
        int first = fresh && k == 0;
        for (long nbk = nb_first; nbk <= nb_last; ++nbk) { /* each n-block's run of m-blocks in [blk_begin, blk_end) */
            long b0 = nbk * mblocks > blk_begin ? nbk * mblocks : blk_begin;
            long b1 = (nbk + 1) * mblocks < blk_end ? (nbk + 1) * mblocks : blk_end;
            int r_lo = (int)(b0 % mblocks) * MB, r_hi = (int)((b1 - 1) % mblocks) * MB + MB;
            r_hi = r_hi < M ? r_hi : M;
            int c_lo = (int)nbk * NB, c_hi = c_lo + NB < N ? c_lo + NB : N;
            for (int j = c_lo; j < c_hi; j += 16) {
                const float *bs = pb + (size_t)((j - na) / 16) * bfl;
                int nc = c_hi - j < 16 ? c_hi - j : 16;
                for (int m = r_lo; m < r_hi; m += MB_V) {
                    for (long q = 0; q < pf_per; ++q) {
                        if (pfa < pfa_end) {
                            __builtin_prefetch(pfa, 0, 2);
                            pfa += 64;
                        } else if (pfb < pfb_end) {
                            __builtin_prefetch(pfb, 0, 2);
                            pfb += 64;
                        }
                    }
                    const float *a = pack_a ? pa + (size_t)((m - ma) / MB_V) * afl : A + (size_t)c0 * lda + m;
                    atb_packed_block(a, pack_a ? MB_V : lda, bs, n, out + (size_t)m * ldo + j, ldo,
                                     r_hi - m < MB_V ? r_hi - m : MB_V, nc, first);
                }
            }
        }
    }
    free(buf);
    return 0;
}
#endif

/* out[m0 : m0 + mr][n0 : n0 + nc] += sum over p in [p0, p1) of A[p][m] B[p][n]; with `fresh`, = instead of += (out's
 * earlier contents are not read) */
static void atb_block(const float *A, long lda, const float *B, long ldb, float *out, long ldo, long p0, long p1,
                      int m0, int mr, int n0, int nc, int fresh) {
#ifdef SEPCONV_AVX512
    __m512 acc[MB][2];
    __mmask16 k0 = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1);
    __mmask16 k1 = nc >= 32 ? 0xFFFF : (nc > 16 ? (__mmask16)((1u << (nc - 16)) - 1) : 0);
    float *o = out + (size_t)m0 * ldo + n0;
    if (nc == NB) { /* full columns: one specialized loop per row count */
        switch (mr) {
#define ATB_ROWS(R) case R: atb_rows(A, lda, B, ldb, o, ldo, p0, p1, m0, n0, fresh, R); return;
            ATB_ROWS(12) ATB_ROWS(11) ATB_ROWS(10) ATB_ROWS(9) ATB_ROWS(8) ATB_ROWS(7) ATB_ROWS(6) ATB_ROWS(5)
            ATB_ROWS(4) ATB_ROWS(3) ATB_ROWS(2) ATB_ROWS(1)
#undef ATB_ROWS
            default: break;
        }
    } else if (nc > 0) { /* fewer columns: the same, masked, one or two vectors wide */
#define ATB_PART(R, NV) case R: atb_rows_part(A, lda, B, ldb, o, ldo, p0, p1, m0, n0, fresh, R, NV, k0, k1); return;
#define ATB_PARTS(NV) switch (mr) { \
            ATB_PART(12, NV) ATB_PART(11, NV) ATB_PART(10, NV) ATB_PART(9, NV) ATB_PART(8, NV) ATB_PART(7, NV) \
            ATB_PART(6, NV) ATB_PART(5, NV) ATB_PART(4, NV) ATB_PART(3, NV) ATB_PART(2, NV) ATB_PART(1, NV) \
            default: break; }
        if (nc > 16) ATB_PARTS(2) else ATB_PARTS(1)
#undef ATB_PARTS
#undef ATB_PART
    }
    for (int r = 0; r < mr; ++r) {
        acc[r][0] = _mm512_maskz_loadu_ps(fresh ? 0 : k0, o + (size_t)r * ldo);
        acc[r][1] = _mm512_maskz_loadu_ps(fresh ? 0 : k1, o + (size_t)r * ldo + 16);
    }
    for (long p = p0; p < p1; ++p) {
        const float *b = B + (size_t)p * ldb + n0, *a = A + (size_t)p * lda + m0;
        __m512 v0 = _mm512_maskz_loadu_ps(k0, b), v1 = _mm512_maskz_loadu_ps(k1, b + 16);
        for (int r = 0; r < mr; ++r) {
            __m512 s = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(s, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(s, v1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; ++r) {
        _mm512_mask_storeu_ps(o + (size_t)r * ldo, k0, acc[r][0]);
        _mm512_mask_storeu_ps(o + (size_t)r * ldo + 16, k1, acc[r][1]);
    }
#else
#ifdef SEPCONV_VEC
    /* whole 16-column sub-blocks in vector registers, MB_V rows at a time; the columns past them below */
    int nv = nc / 16 * 16;
    for (int j = 0; j < nv; j += 16)
        for (int r0 = 0; r0 < mr; r0 += MB_V) {
            float *o = out + (size_t)(m0 + r0) * ldo + n0 + j;
            switch (mr - r0 < MB_V ? mr - r0 : MB_V) {
#define ATB_ROWS_V(R) case R: atb_rows_v(A, lda, B, ldb, o, ldo, p0, p1, m0 + r0, n0 + j, 16, fresh, R); break;
                ATB_ROWS_V(6) ATB_ROWS_V(5) ATB_ROWS_V(4) ATB_ROWS_V(3) ATB_ROWS_V(2) ATB_ROWS_V(1)
#undef ATB_ROWS_V
                default: break;
            }
        }
    n0 += nv;
    nc -= nv;
#endif
    for (int r = 0; r < mr; ++r) {
        float *o = out + (size_t)(m0 + r) * ldo + n0;
        if (fresh)
            for (int j = 0; j < nc; ++j) o[j] = 0.f;
        for (long p = p0; p < p1; ++p) {
            float s = A[(size_t)p * lda + m0 + r];
            const float *b = B + (size_t)p * ldb + n0;
            for (int j = 0; j < nc; ++j) o[j] += s * b[j];
        }
    }
#endif
}

/* Blocks [blk_begin, blk_end) of out (numbered m-block-minor within each n-block) += their sums over pixels
 * [p0, p1), in chunks of pc pixels; with `fresh`, = (the blocks' earlier contents are not read, and are zeroed
 * when p0 == p1). Also called by the fused backward kernel (fused_dwpw.c) on the rows it holds in cache. */
void sepconv_atb_range(const float *A, long lda, const float *B, long ldb, float *out, long ldo, int M, int N,
                      long p0, long p1, long pc, long blk_begin, long blk_end, int fresh) {
    if (blk_end <= blk_begin) return;
#ifdef SEPCONV_VEC
    if (atb_range_packed(A, lda, B, ldb, out, ldo, M, N, p0, p1 > p0 ? p1 : p0, pc, blk_begin, blk_end, fresh) == 0)
        return;
#endif
    int mblocks = (M + MB - 1) / MB;
    if (p1 <= p0) {
        if (!fresh) return;
        p1 = p0; /* one empty chunk: the blocks written as zeros */
    }
    for (long c0 = p0; c0 < p1 || (fresh && c0 == p0); c0 += pc) {
        long c1 = p1 - c0 < pc ? p1 : c0 + pc;
        for (long blk = blk_begin; blk < blk_end; ++blk) {
            int m0 = (int)(blk % mblocks) * MB, n0 = (int)(blk / mblocks) * NB;
            int mr = M - m0 < MB ? M - m0 : MB, nc = N - n0 < NB ? N - n0 : NB;
            atb_block(A, lda, B, ldb, out, ldo, c0, c1, m0, mr, n0, nc, fresh && c0 == p0);
        }
        if (c1 >= p1) break;
    }
}

int sepconv_atb_has_avx512(void) {
#ifdef SEPCONV_AVX512
    return 1;
#else
    return 0;
#endif
}

/* out = A^T B (overwritten). Returns 0, or -1 when a partial-sum buffer could not be allocated. */
int sepconv_gemm_atb_f32(long P, int M, int N, const float *A, long lda, const float *B, long ldb, float *out,
                         long ldo, int threads) {
    long blocks = (long)((M + MB - 1) / MB) * ((N + NB - 1) / NB);
    /* pixels per chunk: A's and B's rows of one chunk in about 384 KiB (an L2 cache is 512 KiB to 2 MiB) */
    long pc = (384L * 1024) / (4L * (M + N));
    if (pc < 64) pc = 64; /* fewer pixels per chunk would reload and store the accumulators too often */
    if (P < 2 * pc) pc = P; /* one pass over `out` when a second chunk would be short */
    /* chunks of equal size: a short last chunk would cost a whole pass over `out` (load and store of every
     * accumulator) for a few pixels */
    if (pc > 0) {
        long chunks = (P + pc - 1) / pc;
        pc = (P + chunks - 1) / chunks;
    }
    if (threads < 1) threads = 1;
#ifndef _OPENMP
    threads = 1;
#endif
    /* the first chunk of each block writes it (no zeroing pass over `out` first, no load of its zeros) */
    if (threads == 1 || P == 0) {
        sepconv_atb_range(A, lda, B, ldb, out, ldo, M, N, 0, P, pc, 0, blocks, 1);
        return 0;
    }
    /* Each thread owns whole register blocks of out where the pixels are few (summing per-thread copies of out would
     * cost as much as the products); else each thread sums its share of the pixels into all of out, its own copy,
     * and the copies are added. Owning blocks, every thread reads all of A, and its one or two 32-column blocks are
     * too narrow to be worth packing (atb_range_packed); with its share of the pixels it reads half of A and B
     * and packs as one thread does. */
    if (blocks >= 2L * threads && P < ATB_SPLIT_PIXELS * threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            long b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
            sepconv_atb_range(A, lda, B, ldb, out, ldo, M, N, 0, P, pc, b0, b1, 1);
        }
#endif
        return 0;
    }
    /* split the pixels, each thread sums into its own buffer, then add */
    float *partial = (float *)malloc((size_t)(threads - 1) * M * N * sizeof(float));
    if (!partial) return -1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        long q0 = P * t / nt, q1 = P * (t + 1) / nt;
        if (t == 0)
            sepconv_atb_range(A, lda, B, ldb, out, ldo, M, N, q0, q1, pc, 0, blocks, 1);
        else
            sepconv_atb_range(A, lda, B, ldb, partial + (size_t)(t - 1) * M * N, N, M, N, q0, q1, pc, 0, blocks, 1);
#pragma omp barrier
#pragma omp for schedule(static)
        for (int r = 0; r < M; ++r)
            for (int u = 1; u < nt; ++u) {
                const float *src = partial + (size_t)(u - 1) * M * N + (size_t)r * N;
                float *dst = out + (size_t)r * ldo;
                for (int j = 0; j < N; ++j) dst[j] += src[j];
            }
    }
#endif
    free(partial);
    return 0;
}
