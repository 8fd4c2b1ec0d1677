/* out[M][N] = A^T B for A: [P][M] and B: [P][N], float32, row-major with leading dimensions (sepconv.train_engine).
 *
 * The weight gradient of a 1x1 convolution in channels-last memory: A = the output gradient's pixels (P x Cout),
 * B = the input's pixels (P x Cin), out = grad_weight (Cout x Cin). P (all pixels of the batch) is large and M, N
 * are channel counts, so the reduction runs over the long dimension. Register blocks of MB rows x 32 columns of
 * `out` (24 AVX-512 accumulators) are kept in registers while a chunk of PC pixels streams past: per pixel two
 * vector loads of B and MB broadcasts of A feed 2 * MB FMAs. Chunks of pixels are sized so that A's and B's rows
 * for the chunk stay in the L2 cache while every register block of `out` sweeps them. Threads (OpenMP, PyTorch's
 * libgomp when built by sepconv) own disjoint register blocks of `out`, so no reduction is needed; when there
 * are fewer blocks than threads the pixels are split instead and the partial sums added.
 * AVX-512 intrinsics where the compiler targets AVX-512F, else AVX2 + FMA or NEON vectors (simd.h: 16-column
 * blocks of 6 rows), else portable loops.
 */
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "simd.h"
#include "wgrad_steps.h"

#define MB 12 /* rows of out per register block */
#define NB 32 /* columns of out per register block (two AVX-512 vectors) */

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
#endif

#ifdef SEPCONV_VEC
#define MB_V 6           /* rows of out per vector register block */
#define NSUB_A (16 / VW) /* vectors per 16-column sub-block */
/* out[m0 : m0 + R][n0 : n0 + 16] += sum over p in [p0, p1) of A[p][m] B[p][n], R <= MB_V a constant after
 * inlining: MB_V x NSUB_A accumulators (12 of AVX2's 16 registers, 24 of NEON's 32) stay in registers. */
SEPCONV_INLINE void atb_rows_v(const float *A, long lda, const float *B, long ldb, float *o, long ldo, long p0,
                               long p1, int m0, int n0, int fresh, const int R) {
    vf acc[MB_V][NSUB_A];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int s = 0; s < NSUB_A; ++s) acc[r][s] = fresh ? vzero() : vload(o + (size_t)r * ldo + s * VW);
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
        for (int s = 0; s < NSUB_A; ++s) vstore(o + (size_t)r * ldo + s * VW, acc[r][s]);
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
#define ATB_ROWS_V(R) case R: atb_rows_v(A, lda, B, ldb, o, ldo, p0, p1, m0 + r0, n0 + j, fresh, R); break;
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
    if (blocks >= 2L * threads) { /* each thread owns whole register blocks of out */
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
    /* few blocks: split the pixels, each thread sums into its own buffer, then add */
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
