/* Weight gradient of a depthwise convolution (channel multiplier 1), float32, NHWC (sepconv.train_engine).
 *
 *   gw[kh][kw][c] = sum over n, oh, ow of gy[n][oh][ow][c] * x[n][oh*sh - ph + kh*dh][ow*sw - pw + kw*dw][c]
 *
 * (x read as zero outside the image). Both tensors are read once, as contiguous runs of C floats per pixel; each
 * thread sums its output rows into its own KH*KW*C buffer (small: in L1/L2), and the buffers are added at the end.
 * Stride 1, dilation 1, a 3/5/7-wide kernel and AVX-512: eight adjacent output pixels at a time share each kernel
 * row's input vectors (sliding window; vectors outside the image and pixels past the row's end read as zero), and
 * every tap's eight products are summed in registers before one add to the buffer; the same window with AVX2 + FMA
 * or NEON vectors (simd.h: 4 or 8 pixels). A 3x3 kernel on whole vectors of channels keeps its nine sums in
 * registers along the row (or, with AVX2 and NEON, along chunks of a long row) instead (wgrad3_row, every vector
 * ISA). Otherwise one pixel at a time, portable loops. At stride 1 with few channels (wgrad_flat_applies) each output
 * row is taken as one run of floats instead (wgrad_flat_row). Plain C with optional OpenMP, loaded with ctypes.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "simd.h"
#include "wgrad_steps.h"

#define WG_SLIDE 8
/* Whether the flat form (wgrad_flat_row) takes C channels at stride 1: where vectors of channels would be mostly
 * empty, and on NEON wherever the last one is partial (NEON has no masked loads: plain loops there, simd.h). The
 * bounds per ISA come from the measurements in docs/design-notes.md ("Where the flat form takes the weight
 * gradient"). */
SEPCONV_INLINE int wgrad_flat_applies(int C) {
#if defined(SEPCONV_VEC_NEON)
    return C < 16 && C % VW != 0;
#elif defined(SEPCONV_VEC_AVX2)
    return C <= 4;
#else
    return C < 8;
#endif
}

#ifdef SEPCONV_AVX512
/* Eight output pixels [ow0, ow0 + 8) of one row (those >= Wo count as zero), stride 1, dilation 1, kernel width KWC
 * (a constant after inlining). rows[kh]: the input row of kernel row kh, or NULL when it lies in the zero padding. */
static inline __attribute__((always_inline)) void wgrad_slide(const float *const *rows, const float *g, int W, int C,
                                                              int Cp, int KH, int KWC, int iw0, int nvalid,
                                                              float *part, const float *prefetch_row,
                                                              const float *g_next) {
    for (int c = 0; c < C; c += 16) {
        int nc = C - c < 16 ? C - c : 16;
        __mmask16 k = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1);
        __m512 gv[WG_SLIDE];
#pragma GCC unroll 8
        for (int j = 0; j < WG_SLIDE; ++j)
            gv[j] = j < nvalid ? _mm512_maskz_loadu_ps(k, g + (size_t)j * C + c) : _mm512_setzero_ps();
        /* the input row the next output row adds and that row's gradient, fetched into L2 while this row
         * computes: without the gradient's, and with the input's into L1 (T0), the kernel read its operands from
         * DRAM at a fraction of a copy's bandwidth whenever they were not in cache already */
        if (prefetch_row) {
#pragma GCC unroll 8
            for (int j = 0; j < WG_SLIDE; ++j)
                if (iw0 + j >= 0 && iw0 + j < W)
                    _mm_prefetch((const char *)(prefetch_row + (size_t)(iw0 + j) * C + c), _MM_HINT_T1);
        }
        if (g_next) {
#pragma GCC unroll 8
            for (int j = 0; j < WG_SLIDE; ++j)
                if (j < nvalid) _mm_prefetch((const char *)(g_next + (size_t)j * C + c), _MM_HINT_T1);
        }
        for (int kh = 0; kh < KH; ++kh) {
            if (!rows[kh]) continue;
            const float *row = rows[kh] + c;
            __m512 in[WG_SLIDE + 6];
#pragma GCC unroll 16
            for (int q = 0; q < WG_SLIDE + KWC - 1; ++q) {
                int iw = iw0 + q;
                in[q] = (iw >= 0 && iw < W) ? _mm512_maskz_loadu_ps(k, row + (size_t)iw * C) : _mm512_setzero_ps();
            }
            float *acc = part + (size_t)kh * KWC * Cp + c;
#pragma GCC unroll 8
            for (int kw = 0; kw < KWC; ++kw) {
                /* two chains of four products: the FMA latency is not waited on eight times in a row */
                __m512 s0 = _mm512_mul_ps(gv[0], in[kw]), s1 = _mm512_mul_ps(gv[1], in[kw + 1]);
                s0 = _mm512_fmadd_ps(gv[2], in[kw + 2], s0);
                s1 = _mm512_fmadd_ps(gv[3], in[kw + 3], s1);
                s0 = _mm512_fmadd_ps(gv[4], in[kw + 4], s0);
                s1 = _mm512_fmadd_ps(gv[5], in[kw + 5], s1);
                s0 = _mm512_fmadd_ps(gv[6], in[kw + 6], s0);
                s1 = _mm512_fmadd_ps(gv[7], in[kw + 7], s1);
                float *a = acc + (size_t)kw * Cp;
                _mm512_store_ps(a, _mm512_add_ps(_mm512_load_ps(a), _mm512_add_ps(s0, s1)));
            }
        }
    }
}
#endif

#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
/* Output pixels per wgrad3_row window: 9 sums, WG3 gradient vectors and one input vector fit 32 registers (AVX-512,
 * NEON) with 8, AVX2's 16 with 4. */
#if defined(SEPCONV_AVX512) || VREGS >= 32
#define WG3 8
#else
#define WG3 4
#endif

/* One block of WG3 output pixels of wgrad3_row for one block of VB channels: g at the block's first pixel, p at the
 * first window column (iw0) of kernel row 0's input row, channel c; row: floats from one input row to the next.
 * Kernel rows kh with has[kh] == 0 lie in the zero padding (skipped); window columns q outside [q_lo, q_hi) are
 * outside the image (skipped); gradient vectors past nvalid (past the row's end) are zero. Each input vector feeds
 * up to three of the nine sums (one per tap column) as it is loaded (IN_REGISTER), no sum loaded or stored. */
SEPCONV_INLINE void wgrad3_block(const float *g, const float *p, size_t row, int C, const int *has, int q_lo,
                                 int q_hi, int nvalid, vb *a) {
    vb gv[WG3];
    const float *gq = g;
#pragma GCC unroll 8
    for (int j = 0; j < WG3; ++j) {
        gv[j] = j < nvalid ? vb_load(gq) : (vb){0};
        gq += C;
        OPAQUE_POINTER(gq);
    }
    const float *pr = p;
#pragma GCC unroll 3
    for (int kh = 0; kh < 3; ++kh) {
        if (has[kh]) {
            const float *pq = pr;
#pragma GCC unroll 10
            for (int q = 0; q < WG3 + 2; ++q) {
                if (q >= q_lo && q < q_hi) {
                    vb v = vb_load(pq);
                    IN_REGISTER(v);
#pragma GCC unroll 3
                    for (int kw = 0; kw < 3; ++kw) { /* tap kw of output pixel q - kw */
                        int j = q - kw;
                        if (j >= 0 && j < WG3) a[3 * kh + kw] = vb_fma(gv[j], v, a[3 * kh + kw]);
                    }
                }
                pq += C;
                OPAQUE_POINTER(pq);
            }
        }
        pr += row;
        OPAQUE_POINTER(pr);
    }
}

/* Prefetch into L2 the line at f of each of WG3 pixels C floats apart (one loop per row: interleaving two rows'
 * prefetches in one loop had GCC compile three variants of it) */
SEPCONV_INLINE void prefetch_pixels(const float *f, int C) {
#pragma GCC unroll 8
    for (int j = 0; j < WG3; ++j) {
        __builtin_prefetch(f, 0, 2);
        f += C;
        OPAQUE_POINTER(f);
    }
}

/* Blocks k0 .. k1 - 1 of a wgrad3_row channel block (g, p at the row's first pixel and window column; pf, gn: the
 * rows to prefetch, or NULL). clean (a constant): windows inside the row and WG3 pixels, no checks. */
SEPCONV_INLINE void wgrad3_blocks(const float *g, const float *p, const float *pf, const float *gn, size_t row, int C,
                                  int W, int Wo, int iw0, const int *has, int k0, int k1, int clean, vb *a) {
    for (int k = k0; k < k1; ++k) {
        size_t off = (size_t)k * WG3 * C;
        if (clean) {
            wgrad3_block(g + off, p + off, row, C, has, 0, WG3 + 2, WG3, a);
        } else {
            int iw = iw0 + k * WG3, nvalid = Wo - k * WG3 < WG3 ? Wo - k * WG3 : WG3;
            int q_lo = iw < 0 ? -iw : 0, q_hi = W - iw < WG3 + 2 ? W - iw : WG3 + 2;
            wgrad3_block(g + off, p + off, row, C, has, q_lo, q_hi, nvalid, a);
        }
        /* the input row the next output row adds and that row's gradient, fetched into L2 while this row computes;
         * one prefetch per pixel covers a 64-byte line of channels, so the vectors of a wider line (AVX2: 32 bytes)
         * fetch it twice, once per channel block */
        if (pf) prefetch_pixels(pf + off, C);
        if (gn) prefetch_pixels(gn + off, C);
    }
}

/* Blocks [k0, k1) of a wgrad3_row row through every channel block in turn, added into part[9][Cp]: [k0, la) and
 * [rb, k1) with checks (at the row's borders), [ca, cb) without. A channel block's nine sums stay in registers along
 * the blocks (one add into part per tap) while windows of WG3 pixels slide along them (wgrad3_block). */
SEPCONV_INLINE void wgrad3_span(const float *x, int W, int C, int Cp, const float *g, int Wo, int ih0, int iw0,
                                const int *has, float *part, const float *pf, const float *gn, int k0, int la, int ca,
                                int cb, int rb, int k1) {
    const size_t row = (size_t)W * C;
    for (int c = 0; c < C; c += VB) {
        vb a[9];
#pragma GCC unroll 9
        for (int t = 0; t < 9; ++t) a[t] = (vb){0};
        const float *p = x + ((ptrdiff_t)ih0 * W + iw0) * C + c, *gc = g + c;
        const float *f = pf ? pf + (ptrdiff_t)iw0 * C + c : NULL, *fg = gn ? gn + c : NULL;
        wgrad3_blocks(gc, p, f, fg, row, C, W, Wo, iw0, has, k0, la, 0, a);
        wgrad3_blocks(gc, p, f, fg, row, C, W, Wo, iw0, has, ca, cb, 1, a);
        wgrad3_blocks(gc, p, f, fg, row, C, W, Wo, iw0, has, rb, k1, 0, a);
#pragma GCC unroll 9
        for (int t = 0; t < 9; ++t) {
            float *s = part + (size_t)t * Cp + c;
            vb_store(s, vb_load(s) + a[t]);
        }
    }
}

#ifndef WG3_CHUNK_BYTES
#define WG3_CHUNK_BYTES 16384
#endif
/* One output row of a 3x3 kernel at stride 1, dilation 1, C a multiple of VB, added into part[9][Cp]: ih0, iw0 =
 * -pw: the first input row and column of the row's windows; x: the image; has[kh]: whether input row ih0 + kh lies
 * in the image; pf, gn: the next output row's last input row and its gradient row (prefetched), or NULL. The blocks
 * whose windows lie inside the row run without checks, those at its borders with them (separate loops, so that GCC
 * keeps the first free of checks). Where a channel block is narrower than a 64-byte line (AVX2: half, NEON: a
 * quarter) and the row's four rows of pixels exceed three chunks' worth, the row goes in chunks of about
 * WG3_CHUNK_BYTES (at least two blocks: one-block chunks cost more in sums added into part than they saved on
 * 7-pixel rows), each through every channel block, so that a line one channel block reads part of is still in L1
 * when the next reads the rest. Otherwise (AVX-512's blocks are whole lines) the whole row goes at once. */
__attribute__((noinline)) static void wgrad3_row(const float *x, int W, int C, int Cp, const float *g, int Wo,
                                                 int ih0, int iw0, const int *has, float *part, const float *pf,
                                                 const float *gn) {
    int ka, kb, nb;
    window_blocks(iw0, Wo, W, WG3, &ka, &kb, &nb);
    long row_bytes = 4L * (long)sizeof(float) * C * (Wo + 2);
    if (VB * (int)sizeof(float) >= 64 || row_bytes <= 3L * WG3_CHUNK_BYTES) {
        wgrad3_span(x, W, C, Cp, g, Wo, ih0, iw0, has, part, pf, gn, 0, ka, ka, kb, kb, nb);
        return;
    }
    int chunk = WG3_CHUNK_BYTES / (4 * (int)sizeof(float) * C * WG3);
    chunk = chunk < 2 ? 2 : chunk;
    for (int k0 = 0; k0 < nb; k0 += chunk) {
        int k1 = nb - k0 < chunk ? nb : k0 + chunk;
        int la = ka < k1 ? ka : k1, cb = kb < k1 ? kb : k1;
        int ca = la > k0 ? la : k0, rb = cb > ca ? cb : ca;
        wgrad3_span(x, W, C, Cp, g, Wo, ih0, iw0, has, part, pf, gn, k0, la, ca, cb, rb, k1);
    }
}
#endif

#ifdef SEPCONV_VEC
#if VREGS >= 32
#define WG_SLIDE_V 8
#else
#define WG_SLIDE_V 4
#endif
/* wgrad_slide with VW-float vectors and WG_SLIDE_V pixels (AVX2: 4 gradient vectors, up to 10 input vectors and two
 * partial sums in its 16 registers; NEON: 8). part's rows are Cp >= C rounded up to 16 floats, so a whole vector
 * fits; a partial channel block reads zeros past C and adds them there. */
SEPCONV_INLINE void wgrad_slide_v(const float *const *rows, const float *g, int W, int C, int Cp, int KH, int KWC,
                                  int iw0, int nvalid, float *part) {
    for (int c = 0; c < C; c += VW) {
        int nc = C - c < VW ? C - c : VW;
        vf gv[WG_SLIDE_V];
#pragma GCC unroll 8
        for (int j = 0; j < WG_SLIDE_V; ++j) gv[j] = j < nvalid ? vload_n(g + (size_t)j * C + c, nc) : vzero();
        for (int kh = 0; kh < KH; ++kh) {
            if (!rows[kh]) continue;
            const float *row = rows[kh] + c;
            vf in[WG_SLIDE_V + 6];
#pragma GCC unroll 16
            for (int q = 0; q < WG_SLIDE_V + KWC - 1; ++q) {
                int iw = iw0 + q;
                in[q] = (iw >= 0 && iw < W) ? vload_n(row + (size_t)iw * C, nc) : vzero();
            }
            float *acc = part + (size_t)kh * KWC * Cp + c;
#pragma GCC unroll 8
            for (int kw = 0; kw < KWC; ++kw) {
                vf s0 = vmul(gv[0], in[kw]), s1 = vmul(gv[1], in[kw + 1]);
#pragma GCC unroll 8
                for (int j = 2; j < WG_SLIDE_V; j += 2) {
                    s0 = vfma(gv[j], in[kw + j], s0);
                    s1 = vfma(gv[j + 1], in[kw + j + 1], s1);
                }
                float *a = acc + (size_t)kw * Cp;
                vstore(a, vadd(vload(a), vadd(s0, s1)));
            }
        }
    }
}
#endif

#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
/* wgrad_row3's sums for the channels [c, c + VB) of one output row, each vector read with LOAD(pointer): the nine
 * taps' sums in registers over the whole row, then added into part[9][Cp]. A macro, written once for the whole
 * blocks (plain loads, expanded in wgrad_row3's loop) and the last, partial one (masked loads, row3_partial): one
 * inline function for both measured slower on the whole blocks (docs/design-notes.md, -masked-wgrad-wholeloop). */
#define ROW3_SUMS(LOAD)                                                                                                \
    do {                                                                                                               \
        vb a[9];                                                                                                       \
        _Pragma("GCC unroll 9") for (int t = 0; t < 9; ++t) a[t] = (vb){0};                                            \
        for (int ow = 0; ow < Wo; ++ow) {                                                                              \
            if (ow == lo && lo < hi) { /* the interior: no bounds to check */                                          \
                for (; ow < hi; ++ow) {                                                                                \
                    vb gv = LOAD(g + (size_t)ow * C + c);                                                              \
                    _Pragma("GCC unroll 3") for (int kh = 0; kh < 3; ++kh) {                                           \
                        const float *xp = rows[kh] + ((size_t)ow * sw - pw) * C + c;                                   \
                        a[3 * kh] = vb_fma(gv, LOAD(xp), a[3 * kh]);                                                   \
                        a[3 * kh + 1] = vb_fma(gv, LOAD(xp + C), a[3 * kh + 1]);                                       \
                        a[3 * kh + 2] = vb_fma(gv, LOAD(xp + 2 * (size_t)C), a[3 * kh + 2]);                           \
                    }                                                                                                  \
                }                                                                                                      \
                if (ow >= Wo) break;                                                                                   \
            }                                                                                                          \
            vb gv = LOAD(g + (size_t)ow * C + c);                                                                      \
            _Pragma("GCC unroll 3") for (int kh = 0; kh < 3; ++kh)                                                     \
                _Pragma("GCC unroll 3") for (int kw = 0; kw < 3; ++kw) {                                               \
                    int iw = ow * sw - pw + kw;                                                                        \
                    if (iw >= 0 && iw < W) a[3 * kh + kw] = vb_fma(gv, LOAD(rows[kh] + (size_t)iw * C + c), a[3 * kh + kw]); \
                }                                                                                                      \
        }                                                                                                              \
        _Pragma("GCC unroll 9") for (int t = 0; t < 9; ++t)                                                            \
            vb_store(part + (size_t)t * Cp + c, vb_load(part + (size_t)t * Cp + c) + a[t]);                          \
    } while (0)

#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC_AVX2)
/* wgrad_row3's last, partial block of channels [c, c + n), n < VB: its n channels read with masked loads, zeros added
 * into part's padding past C. */
static void row3_partial(const float *const *rows, const float *g, int W, int C, int Cp, int Wo, int sw, int pw,
                         int lo, int hi, int c, int n, float *part) {
#define ROW3_MASKED(p) vb_load_n((p), n)
    ROW3_SUMS(ROW3_MASKED);
#undef ROW3_MASKED
}
#endif

/* One output row of a 3x3 undilated kernel, column stride sw, whose three input rows lie in the image: a block of VB
 * channels at a time, the nine taps' sums held in registers over the whole row and added into part once. At
 * strides above 1, and with AVX2 and NEON at stride 1 where the channels are not whole vectors (whole vectors take
 * wgrad3_row, whose windows load each input vector once for three taps: docs/design-notes.md); elsewhere one pixel
 * at a time. Channels past the last whole block: one partial block with masked loads (row3_partial), plain loops
 * on NEON. */
static void wgrad_row3(const float *const *rows, const float *g, int W, int C, int Cp, int Wo, int sw, int pw,
                       float *part, const float *x_next_row, const float *g_next_row) {
    /* the input row the next output row adds and that row's gradient, fetched into L2 while this row computes (as
     * the AVX-512 window does per block) */
    if (x_next_row)
        for (size_t i = 0; i < (size_t)W * C; i += 16) __builtin_prefetch(x_next_row + i, 0, 2);
    if (g_next_row)
        for (size_t i = 0; i < (size_t)Wo * C; i += 16) __builtin_prefetch(g_next_row + i, 0, 2);
    /* output pixels whose three taps all lie in the row: iw = ow sw - pw + kw in [0, W) for kw = 0..2 */
    int lo = (pw + sw - 1) / sw, hi = W + pw - 3 < 0 ? 0 : (W + pw - 3) / sw + 1;
    lo = lo < Wo ? lo : Wo;
    hi = hi < Wo ? hi : Wo;
    if (hi < lo) hi = lo;
    int c = 0;
    for (; c + VB <= C; c += VB) ROW3_SUMS(vb_load);
#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC_AVX2)
    if (c < C) row3_partial(rows, g, W, C, Cp, Wo, sw, pw, lo, hi, c, C - c, part); /* masked loads */
#else
    for (; c < C; ++c) /* NEON: no masked loads (simd.h), plain loops */
        for (int ow = 0; ow < Wo; ++ow)
            for (int kh = 0; kh < 3; ++kh)
                for (int kw = 0; kw < 3; ++kw) {
                    int iw = ow * sw - pw + kw;
                    if (iw >= 0 && iw < W)
                        part[(size_t)(3 * kh + kw) * Cp + c] += g[(size_t)ow * C + c] * rows[kh][(size_t)iw * C + c];
                }
#endif
}
#endif

/* One output row (image n, row oh) added into part[KH][KW][Cp]. g_next_row: the gradient row this thread takes next
 * (prefetched), or NULL. Also called by the fused backward kernel (fused_dwpw.c) on rows it holds in cache. */
void sepconv_wgrad_row(const float *x, int H, int W, int C, const float *g, int Wo, int KH, int KW, int sh, int sw,
                      int ph, int pw, int dh, int dw, int oh, int Cp, float *part, const float *g_next_row) {
    const float *rows[16];
    for (int kh = 0; kh < KH; ++kh) {
        int ih = oh * sh - ph + kh * dh;
        rows[kh] = (ih >= 0 && ih < H) ? x + (size_t)ih * W * C : NULL;
    }
#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
    if (KH == 3 && KW == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1 && C % VB == 0) {
        int ih0 = oh - ph, has[3] = {rows[0] != NULL, rows[1] != NULL, rows[2] != NULL};
        const float *pf = ih0 + 3 >= 0 && ih0 + 3 < H ? x + (size_t)(ih0 + 3) * W * C : NULL; /* the next row's last */
        wgrad3_row(x, W, C, Cp, g, Wo, ih0, -pw, has, part, pf, g_next_row);
        return;
    }
    /* C * sw <= 512: with wider pixels (512 channels at stride 2) the AVX2 build was slower than the loops below
     * (docs/design-notes.md); a block's loads then step 4 KiB from pixel to pixel */
    if (KH == 3 && KW == 3 && dw == 1 && (long)C * sw <= 512 && rows[0] && rows[1] && rows[2]
#ifdef SEPCONV_AVX512
        && sw > 1
#endif
    ) {
        int ihn = (oh + 1) * sh - ph + 2 * dh; /* the last input row of the next output row */
        wgrad_row3(rows, g, W, C, Cp, Wo, sw, pw, part, ihn >= 0 && ihn < H ? x + (size_t)ihn * W * C : NULL,
                   g_next_row);
        return;
    }
#endif
#ifdef SEPCONV_AVX512
    if (sw == 1 && dw == 1 && KH <= 16 && (KW == 3 || KW == 5 || KW == 7)) {
        int ihn = (oh + 1) * sh - ph + (KH - 1) * dh; /* the last input row of the next output row */
        const float *pf = ihn >= 0 && ihn < H ? x + (size_t)ihn * W * C : NULL;
        for (int ow0 = 0; ow0 < Wo; ow0 += WG_SLIDE) {
            int nvalid = Wo - ow0 < WG_SLIDE ? Wo - ow0 : WG_SLIDE;
            const float *gp = g + (size_t)ow0 * C, *gn = g_next_row ? g_next_row + (size_t)ow0 * C : NULL;
            if (KW == 3) wgrad_slide(rows, gp, W, C, Cp, KH, 3, ow0 - pw, nvalid, part, pf, gn);
            else if (KW == 5) wgrad_slide(rows, gp, W, C, Cp, KH, 5, ow0 - pw, nvalid, part, pf, gn);
            else wgrad_slide(rows, gp, W, C, Cp, KH, 7, ow0 - pw, nvalid, part, pf, gn);
        }
        return;
    }
#elif defined(SEPCONV_VEC)
    if (sw == 1 && dw == 1 && KH <= 16 && (KW == 3 || KW == 5 || KW == 7)) {
        for (int ow0 = 0; ow0 < Wo; ow0 += WG_SLIDE_V) {
            int nvalid = Wo - ow0 < WG_SLIDE_V ? Wo - ow0 : WG_SLIDE_V;
            const float *gp = g + (size_t)ow0 * C;
            if (KW == 3) wgrad_slide_v(rows, gp, W, C, Cp, KH, 3, ow0 - pw, nvalid, part);
            else if (KW == 5) wgrad_slide_v(rows, gp, W, C, Cp, KH, 5, ow0 - pw, nvalid, part);
            else wgrad_slide_v(rows, gp, W, C, Cp, KH, 7, ow0 - pw, nvalid, part);
        }
        return;
    }
#else
    (void)g_next_row;
#endif
    for (int ow = 0; ow < Wo; ++ow) {
        const float *gp = g + (size_t)ow * C;
        for (int kh = 0; kh < KH; ++kh) {
            if (!rows[kh]) continue;
            for (int kw = 0; kw < KW; ++kw) {
                int iw = ow * sw - pw + kw * dw;
                if (iw < 0 || iw >= W) continue;
                const float *xp = rows[kh] + (size_t)iw * C;
                float *a = part + ((size_t)kh * KW + kw) * Cp;
                for (int c = 0; c < C; ++c) a[c] += gp[c] * xp[c];
            }
        }
    }
}

/* The flat form at stride 1 (as the fused kernel's flat path, fused_dwpw.c): in channels-last, output row oh's
 * floats [ow C, ow C + C) and input row oh - ph + kh dh's floats shifted by (kw dw - pw) C line up, so each tap is
 *   part[kh][kw][f] += g[f] * x_row[f + (kw dw - pw) C]   over the f whose input pixel is inside the row,
 * one plain loop over the row's Wo C floats that the compiler vectorizes whatever C, where a vector of channels
 * would hold C useful lanes (3 of 16 for an RGB input). part: [KH][KW][Wo C]; float f is channel f % C. Used by
 * sepconv_depthwise_wgrad_f32 at stride 1 where wgrad_flat_applies. */
static void wgrad_flat_row(const float *x, int H, int W, int C, const float *restrict g, int Wo, int KH, int KW,
                           int ph, int pw, int dh, int dw, int oh, float *part) {
    long n = (long)Wo * C;
    for (int kh = 0; kh < KH; ++kh) {
        int ih = oh - ph + kh * dh;
        if (ih < 0 || ih >= H) continue;
        const float *restrict xr = x + (size_t)ih * W * C;
        for (int kw = 0; kw < KW; ++kw) {
            int shift = kw * dw - pw; /* input column = output column + shift */
            int lo = shift < 0 ? -shift : 0, hi = W - shift < Wo ? W - shift : Wo;
            float *restrict a = part + ((size_t)kh * KW + kw) * n;
            long s = (long)shift * C, f = (long)lo * C, end = (long)hi * C;
            for (; f + VB <= end; f += VB) /* whole vectors, unaligned: no peeling for these short runs */
                vb_store(a + f, vb_fma(vb_load(g + f), vb_load(xr + f + s), vb_load(a + f)));
            for (; f < end; ++f) a[f] += g[f] * xr[f + s];
        }
    }
}

/* x: [N][H][W][C]; gy: [N][Ho][Wo][C]; gw: [KH][KW][C] (overwritten). KH <= 16 (the kernel rows are looked up in a
 * fixed table). Rows are split statically among the threads and the threads' sums added in thread order, so the
 * result does not depend on timing. Returns 0, -1 if the buffers could not be allocated, -2 for KH > 16. */
int sepconv_depthwise_wgrad_f32(const float *x, int N, int H, int W, int C, const float *gy, int Ho, int Wo, int KH,
                                int KW, int sh, int sw, int ph, int pw, int dh, int dw, float *gw, int threads) {
    if (KH > 16) return -2;
    if (threads < 1) threads = 1;
    /* each thread's sums: [KH][KW][Cp] channel vectors, or [KH][KW][Wo C] in the flat form (float f: channel f % C) */
    int flat = sh == 1 && sw == 1 && wgrad_flat_applies(C), Cp = (C + 15) / 16 * 16;
    size_t taps = (size_t)KH * KW, row = (size_t)Wo * C, stride = flat ? row : (size_t)Cp;
    size_t per = (taps * stride + 15) / 16 * 16;
    long rows = (long)N * Ho;
    float *parts = (float *)aligned_alloc(64, ((size_t)threads * per * sizeof(float) + 63) / 64 * 64);
    if (!parts) return -1;
    memset(parts, 0, (size_t)threads * per * sizeof(float));
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && rows > 1)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *part = parts + (size_t)tid * per;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long r = 0; r < rows; ++r) {
            int n = (int)(r / Ho), oh = (int)(r % Ho);
            /* gy's rows are consecutive: the next one follows this one (the next image's first after the last) */
            const float *g = gy + (size_t)r * row, *xn = x + (size_t)n * H * W * C;
            if (flat)
                wgrad_flat_row(xn, H, W, C, g, Wo, KH, KW, ph, pw, dh, dw, oh, part);
            else
                sepconv_wgrad_row(xn, H, W, C, g, Wo, KH, KW, sh, sw, ph, pw, dh, dw, oh, Cp, part,
                                  r + 1 < rows ? g + row : NULL);
        }
    }
    for (size_t t = 0; t < taps; ++t)
        for (int c = 0; c < C; ++c) {
            float s = 0.f;
            for (int i = 0; i < threads; ++i) {
                const float *a = parts + (size_t)i * per + t * stride;
                if (!flat) {
                    s += a[c];
                    continue;
                }
                float p = 0.f;
                for (size_t f = (size_t)c; f < row; f += (size_t)C) p += a[f];
                s += p;
            }
            gw[t * C + c] = s;
        }
    free(parts);
    return 0;
}
