/* The depthwise weight gradient's per-row step (depthwise_wgrad.c), shared with the fused backward kernel
 * (fused_dwpw.c). Hidden: not part of the library's interface. */
#ifndef SEPCONV_WGRAD_ROW_H
#define SEPCONV_WGRAD_ROW_H

/* Adds output row oh of image x ([H][W][C]) into part[KH][KW][Cp] (64-byte aligned, Cp = C rounded up to 16):
 * part[kh][kw][c] += sum over ow of g[ow][c] * x[oh*sh - ph + kh*dh][ow*sw - pw + kw*dw][c] (zero outside the
 * image). g: that output row's gradient, [Wo][C]; g_next_row: the row to prefetch next, or NULL. KH <= 16. */
__attribute__((visibility("hidden"))) void sepconv_wgrad_row(const float *x, int H, int W, int C, const float *g,
                                                             int Wo, int KH, int KW, int sh, int sw, int ph, int pw,
                                                             int dh, int dw, int oh, int Cp, float *part,
                                                             const float *g_next_row);

#endif
