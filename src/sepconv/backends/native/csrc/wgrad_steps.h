/* The weight gradients' inner steps, shared with the fused backward kernel (fused_dwpw.c): the depthwise weight
 * gradient's per-row step (depthwise_wgrad.c) and the 1x1 weight gradient's blocked A^T B (gemm_atb.c). Hidden:
 * not part of the library's interface. */
#ifndef SEPCONV_WGRAD_STEPS_H
#define SEPCONV_WGRAD_STEPS_H

/* Adds output row oh of image x ([H][W][C]) into part[KH][KW][Cp] (64-byte aligned, Cp = C rounded up to 16):
 * part[kh][kw][c] += sum over ow of g[ow][c] * x[oh*sh - ph + kh*dh][ow*sw - pw + kw*dw][c] (zero outside the
 * image). g: that output row's gradient, [Wo][C]; g_next_row: the row to prefetch next, or NULL. KH <= 16. */
__attribute__((visibility("hidden"))) void sepconv_wgrad_row(const float *x, int H, int W, int C, const float *g,
                                                             int Wo, int KH, int KW, int sh, int sw, int ph, int pw,
                                                             int dh, int dw, int oh, int Cp, float *part,
                                                             const float *g_next_row);

/* out[M][N] (row stride ldo) += A^T B over pixels [p0, p1) of A: [P][M] (row stride lda) and B: [P][N] (ldb), for
 * the register blocks [blk_begin, blk_end) of out (12 x 32, m-block-minor), the pixels in chunks of pc; with
 * fresh != 0, = instead of += (those blocks of out are not read first). */
__attribute__((visibility("hidden"))) void sepconv_atb_range(const float *A, long lda, const float *B, long ldb,
                                                             float *out, long ldo, int M, int N, long p0, long p1,
                                                             long pc, long blk_begin, long blk_end, int fresh);

#endif
