/* Checks sepconv's C kernels (src/sepconv/backends/native/csrc) against plain double-precision references, for
 * whichever instruction set the compiler targets (simd.h picks AVX-512, AVX2 + FMA, NEON or portable loops).
 * Built and run by tests/test_native_isa.py once per ISA (natively, or cross-compiled and run under qemu):
 *
 *   D=src/sepconv/backends/native/csrc
 *   cc -O2 -std=c11 [ISA flags] -I$D tests/kernels_check.c $D/fused_dwpw.c $D/gemm_atb.c $D/depthwise_wgrad.c \
 *      -o kernels_check -lm && ./kernels_check
 *
 * Prints "isa=<name> checks=<n> failures=<k>" and exits 0 only when every check passes. The shapes cover whole and
 * partial channel vectors, the few-channel (flat) path, strides, dilations, kernel widths 1/3/5/7, padding,
 * output-channel counts that are not a whole panel, activations, with and without biases. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *sepconv_isa(void);
long sepconv_fused_jobs(int N, int Ho, int Wo, int tile, int groups);
int sepconv_fused_dwpw_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                           int KW, int sh, int sw, int ph, int pw, int dh, int dw, int dw_act, const float *wpw,
                           const float *bpw, int Cout, int pw_act, float *y, float *mid, int Ho, int Wo, int tile,
                           int groups, int stream, int parts, long job_begin, long job_end, int threads);
int sepconv_fused_forward_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                              int KW, int sh, int sw, int ph, int pw, const float *wpw, const float *bpw, int Cout,
                              float *y, float *mid, int Ho, int Wo, int tile, int groups, int stream, int threads);
void sepconv_pack_panels_f32(const float *w, long w_k, long w_n, int K, int N, float *panels, int threads);
int sepconv_gemm_atb_f32(long P, int M, int N, const float *A, long lda, const float *B, long ldb, float *out,
                         long ldo, int threads);
int sepconv_gemm_f32(long P, int K, int N, const float *a, long lda, const float *w, long w_k, long w_n,
                     const float *bias, float *y, int chunk, int threads);
int sepconv_depthwise_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                          int KW, int ph, int pw, int dh, int dw, float *y, int threads);
int sepconv_depthwise_wgrad_f32(const float *x, int N, int H, int W, int C, const float *gy, int Ho, int Wo, int KH,
                                int KW, int sh, int sw, int ph, int pw, int dh, int dw, float *gw, int threads);
int sepconv_dwpw_backward_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                              int KW, int sh, int sw, int ph, int pw, const float *gy, int Cout, const float *wpw,
                              const float *mid, float *gx, float *gwdw, float *gbdw, float *gwpw, int band,
                              int groups, int stream, int threads);

static unsigned long long state = 88172645463325252ULL;
static float uniform(void) { /* xorshift64: in [-1, 1) */
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (float)((state >> 40) * (1.0 / 8388608.0)) - 1.f;
}
static float *randoms(size_t n) {
    float *p = (float *)malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; ++i) p[i] = uniform();
    return p;
}
static double act(double v, int a) { return a == 0 ? v : (a == 1 ? (v > 0 ? v : 0) : (v < 0 ? 0 : (v > 6 ? 6 : v))); }

static int checks = 0, failures = 0;
static void expect_close(const char *what, int index, double got, double want, double scale) {
    ++checks;
    if (!(fabs(got - want) <= 1e-5 * scale + 1e-6)) {
        if (failures < 20) fprintf(stderr, "FAIL %s [%d]: got %.7g, want %.7g\n", what, index, got, want);
        ++failures;
    }
}

static void check_fused(int N, int H, int W, int C, int K, int s, int pad, int d, int Cout, int bias, int dw_act,
                        int pw_act, int tile, int groups, int stream) {
    char what[160];
    snprintf(what, sizeof what, "fused N%d %dx%dx%d k%d s%d p%d d%d ->%d b%d a%d/%d t%d g%d s%d", N, H, W, C, K, s,
             pad, d, Cout, bias, dw_act, pw_act, tile, groups, stream);
    int Ho = (H + 2 * pad - d * (K - 1) - 1) / s + 1, Wo = (W + 2 * pad - d * (K - 1) - 1) / s + 1;
    float *x = randoms((size_t)N * H * W * C), *wdw = randoms((size_t)K * K * C), *bdw = randoms(C);
    float *wpw = randoms((size_t)C * Cout), *bpw = randoms(Cout); /* wpw: [c][j] */
    int panels = (Cout + 31) / 32;
    size_t packed_floats = (size_t)panels * C * 32;
    float *packed = (float *)aligned_alloc(64, (packed_floats * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; i < packed_floats; ++i) packed[i] = NAN; /* the padding columns must be zeroed */
    sepconv_pack_panels_f32(wpw, Cout, 1, C, Cout, packed, 1 + tile % 2); /* B[c][j] = wpw[c][j] */
    for (int c = 0; c < C; ++c)
        for (int j = 0; j < panels * 32; ++j) {
            float want = j < Cout ? wpw[(size_t)c * Cout + j] : 0.f;
            ++checks;
            if (packed[((size_t)(j / 32) * C + c) * 32 + j % 32] != want) ++failures;
        }
    size_t ny = (size_t)N * Ho * Wo * Cout, nmid = (size_t)N * Ho * Wo * C;
    float *y = (float *)aligned_alloc(64, (ny * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; i < ny; ++i) y[i] = NAN;
    /* every other case also writes the depthwise output (a training step's forward pass) */
    float *mid = tile % 3 ? (float *)aligned_alloc(64, (nmid * sizeof(float) + 63) / 64 * 64) : NULL;
    for (size_t i = 0; mid && i < nmid; ++i) mid[i] = NAN;
    long jobs = sepconv_fused_jobs(N, Ho, Wo, tile, groups);
    int code = sepconv_fused_dwpw_f32(x, N, H, W, C, wdw, bias ? bdw : NULL, K, K, s, s, pad, pad, d, d, dw_act,
                                      packed, bias ? bpw : NULL, Cout, pw_act, y, mid, Ho, Wo, tile, groups, stream, 3,
                                      0, jobs, 1);
    ++checks;
    if (code != 0) { fprintf(stderr, "FAIL %s: returned %d\n", what, code); ++failures; }
    double *dv = (double *)malloc(sizeof(double) * C), *da = (double *)malloc(sizeof(double) * C);
    for (int n = 0; n < N; ++n)
        for (int oh = 0; oh < Ho; ++oh)
            for (int ow = 0; ow < Wo; ++ow) {
                for (int c = 0; c < C; ++c) {
                    double v = bias ? bdw[c] : 0, a = fabs(v);
                    for (int kh = 0; kh < K; ++kh)
                        for (int kw = 0; kw < K; ++kw) {
                            int ih = oh * s - pad + kh * d, iw = ow * s - pad + kw * d;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                            double t = (double)x[(((size_t)n * H + ih) * W + iw) * C + c] * wdw[((size_t)kh * K + kw) * C + c];
                            v += t;
                            a += fabs(t);
                        }
                    dv[c] = act(v, dw_act);
                    da[c] = a;
                    if (mid) expect_close(what, c, mid[(((size_t)n * Ho + oh) * Wo + ow) * C + c], dv[c], a + 1);
                }
                for (int j = 0; j < Cout; ++j) {
                    double v = bias ? bpw[j] : 0, a = fabs(v) + 1;
                    for (int c = 0; c < C; ++c) {
                        v += dv[c] * wpw[(size_t)c * Cout + j];
                        a += (fabs(dv[c]) + da[c]) * fabs(wpw[(size_t)c * Cout + j]);
                    }
                    size_t at = (((size_t)n * Ho + oh) * Wo + ow) * Cout + j;
                    expect_close(what, (int)at, y[at], act(v, pw_act), a);
                }
            }
    if (d == 1 && dw_act == 0 && pw_act == 0) {
        /* the training forward pass: the same kernel on the weights in PyTorch's layouts ([C][K][K], [Cout][C]),
         * laid out inside the call; the same arithmetic, so the same bits */
        float *wdw_pt = (float *)malloc(sizeof(float) * K * K * C), *wpw_pt = (float *)malloc(sizeof(float) * C * Cout);
        for (int c = 0; c < C; ++c)
            for (int k = 0; k < K * K; ++k) wdw_pt[(size_t)c * K * K + k] = wdw[(size_t)k * C + c];
        for (int c = 0; c < C; ++c)
            for (int j = 0; j < Cout; ++j) wpw_pt[(size_t)j * C + c] = wpw[(size_t)c * Cout + j];
        float *y2 = (float *)aligned_alloc(64, (ny * sizeof(float) + 63) / 64 * 64);
        float *mid2 = mid ? (float *)aligned_alloc(64, (nmid * sizeof(float) + 63) / 64 * 64) : NULL;
        code = sepconv_fused_forward_f32(x, N, H, W, C, wdw_pt, bias ? bdw : NULL, K, K, s, s, pad, pad, wpw_pt,
                                         bias ? bpw : NULL, Cout, y2, mid2, Ho, Wo, tile, groups, stream,
                                         1 + tile % 2);
        ++checks;
        if (code != 0) { fprintf(stderr, "FAIL %s (PyTorch layouts): returned %d\n", what, code); ++failures; }
        for (size_t i = 0; i < ny; ++i) {
            ++checks;
            if (y2[i] != y[i]) ++failures;
        }
        for (size_t i = 0; mid2 && i < nmid; ++i) {
            ++checks;
            if (mid2[i] != mid[i]) ++failures;
        }
        free(wdw_pt); free(wpw_pt); free(y2); free(mid2);
    }
    free(x); free(wdw); free(bdw); free(wpw); free(bpw); free(packed); free(y); free(mid); free(dv); free(da);
}

static void check_atb(long P, int M, int N, int threads) {
    char what[64];
    snprintf(what, sizeof what, "atb P%ld M%d N%d threads%d", P, M, N, threads);
    float *A = randoms((size_t)P * (M + 3)), *B = randoms((size_t)P * (N + 5));
    long ldo = N + 2;
    float *out = randoms((size_t)M * ldo);
    ++checks;
    if (sepconv_gemm_atb_f32(P, M, N, A, M + 3, B, N + 5, out, ldo, threads) != 0) { ++failures; return; }
    for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
            double v = 0, a = 1;
            for (long p = 0; p < P; ++p) {
                double t = (double)A[(size_t)p * (M + 3) + m] * B[(size_t)p * (N + 5) + n];
                v += t;
                a += fabs(t);
            }
            expect_close(what, m * N + n, out[(size_t)m * ldo + n], v, a);
        }
    free(A); free(B); free(out);
}

/* y = a @ B + bias with B[k][j] = w[k w_k + j w_n]: the weight (N x K) read transposed (forward) or as stored. */
static void check_gemm(long P, int K, int N, int transposed, int bias, int chunk, int threads) {
    char what[96];
    snprintf(what, sizeof what, "gemm P%ld K%d N%d t%d b%d chunk%d threads%d", P, K, N, transposed, bias, chunk,
             threads);
    long lda = K + 3;
    float *a = randoms((size_t)P * lda), *w = randoms((size_t)K * N), *b = bias ? randoms(N) : NULL;
    float *y = randoms((size_t)P * N);
    long w_k = transposed ? N : 1, w_n = transposed ? 1 : K;
    ++checks;
    if (sepconv_gemm_f32(P, K, N, a, lda, w, w_k, w_n, b, y, chunk, threads) != 0) { ++failures; return; }
    for (long p = 0; p < P; ++p)
        for (int j = 0; j < N; ++j) {
            double v = b ? b[j] : 0, s = 1 + fabs(v);
            for (int k = 0; k < K; ++k) {
                double t = (double)a[(size_t)p * lda + k] * w[(size_t)k * w_k + (size_t)j * w_n];
                v += t;
                s += fabs(t);
            }
            expect_close(what, (int)(p * N + j), y[(size_t)p * N + j], v, s);
        }
    free(a); free(w); free(b); free(y);
}

static void check_wgrad(int N, int H, int W, int C, int K, int s, int pad, int d, int threads) {
    char what[96];
    snprintf(what, sizeof what, "wgrad N%d %dx%dx%d k%d s%d p%d d%d threads%d", N, H, W, C, K, s, pad, d, threads);
    int Ho = (H + 2 * pad - d * (K - 1) - 1) / s + 1, Wo = (W + 2 * pad - d * (K - 1) - 1) / s + 1;
    float *x = randoms((size_t)N * H * W * C), *gy = randoms((size_t)N * Ho * Wo * C), *gw = randoms((size_t)K * K * C);
    ++checks;
    if (sepconv_depthwise_wgrad_f32(x, N, H, W, C, gy, Ho, Wo, K, K, s, s, pad, pad, d, d, gw, threads) != 0) {
        ++failures;
        return;
    }
    for (int kh = 0; kh < K; ++kh)
        for (int kw = 0; kw < K; ++kw)
            for (int c = 0; c < C; ++c) {
                double v = 0, a = 1;
                for (int n = 0; n < N; ++n)
                    for (int oh = 0; oh < Ho; ++oh)
                        for (int ow = 0; ow < Wo; ++ow) {
                            int ih = oh * s - pad + kh * d, iw = ow * s - pad + kw * d;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                            double t = (double)gy[(((size_t)n * Ho + oh) * Wo + ow) * C + c] *
                                       x[(((size_t)n * H + ih) * W + iw) * C + c];
                            v += t;
                            a += fabs(t);
                        }
                int at = (kh * K + kw) * C + c;
                expect_close(what, at, gw[at], v, a);
            }
    free(x); free(gy); free(gw);
}

/* A depthwise convolution on its own, stride 1 (the flat path in vector builds), against the double sum. */
static void check_depthwise(int N, int H, int W, int C, int KH, int KW, int ph, int pw, int dh, int dw, int bias,
                            int threads) {
    char what[128];
    snprintf(what, sizeof what, "depthwise N%d %dx%dx%d k%dx%d p%d,%d d%d,%d bias%d threads%d", N, H, W, C, KH, KW,
             ph, pw, dh, dw, bias, threads);
    int Ho = H + 2 * ph - (KH - 1) * dh, Wo = W + 2 * pw - (KW - 1) * dw;
    size_t ny = (size_t)N * Ho * Wo * C;
    float *x = randoms((size_t)N * H * W * C), *w = randoms((size_t)KH * KW * C), *b = bias ? randoms(C) : NULL;
    float *y = randoms(ny + 16); /* the 16 floats past the end must stay as they are */
    float guard = y[ny + 7];
    ++checks;
    if (sepconv_depthwise_f32(x, N, H, W, C, w, b, KH, KW, ph, pw, dh, dw, y, threads) != 0 || y[ny + 7] != guard) {
        ++failures;
        return;
    }
    for (int n = 0; n < N; ++n)
        for (int oh = 0; oh < Ho; ++oh)
            for (int ow = 0; ow < Wo; ++ow)
                for (int c = 0; c < C; ++c) {
                    double v = b ? b[c] : 0, a = fabs(v) + 1;
                    for (int kh = 0; kh < KH; ++kh)
                        for (int kw = 0; kw < KW; ++kw) {
                            int ih = oh - ph + kh * dh, iw = ow - pw + kw * dw;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                            double t = (double)x[(((size_t)n * H + ih) * W + iw) * C + c] * w[(kh * KW + kw) * C + c];
                            v += t;
                            a += fabs(t);
                        }
                    size_t at = (((size_t)n * Ho + oh) * Wo + ow) * C + c;
                    expect_close(what, (int)at, y[at], v, a);
                }
    free(x); free(w); free(b); free(y);
}

/* The fused backward pass of a depthwise (KH x KW, stride sh x sw, padding ph, pw) -> 1x1 (C -> Cout) pair,
 * against gm = gy @ wpw and the two depthwise gradients computed from it in double (weights and the depthwise weight
 * gradient in PyTorch's layouts, [C][KH][KW] and [Cout][C]). */
static void check_backward_gx(int N, int H, int W, int C, int KH, int KW, int sh, int sw, int ph, int pw, int Cout,
                              int bias, int band, int threads, int pw_grad, int want_gx, int groups) {
    char what[180];
    snprintf(what, sizeof what, "backward N%d %dx%dx%d k%dx%d s%d,%d p%d,%d ->%d b%d band%d threads%d pw%d gx%d groups%d",
             N, H, W, C, KH, KW, sh, sw, ph, pw, Cout, bias, band, threads, pw_grad, want_gx, groups);
    int Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
    size_t npix = (size_t)N * Ho * Wo;
    float *x = randoms((size_t)N * H * W * C), *wdw = randoms((size_t)KH * KW * C), *gy = randoms(npix * Cout);
    float *wpw = randoms((size_t)Cout * C), *gw = randoms((size_t)KH * KW * C);
    /* gx 64-byte aligned, as PyTorch allocates it, and NaN: every element must be written */
    size_t ngx = (size_t)N * H * W * C;
    float *gx = (float *)aligned_alloc(64, (ngx * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; i < ngx; ++i) gx[i] = NAN;
    float *gb = bias ? randoms(C) : NULL;
    /* pw_grad 1: the 1x1 weight gradient from a given mid; 2: from mid recomputed by the kernel (with a depthwise
     * bias where `bias`), here in double from x */
    float *mid = pw_grad == 1 ? randoms(npix * C) : NULL, *gwpw = pw_grad ? randoms((size_t)Cout * C) : NULL;
    float *bdw = pw_grad == 2 && bias ? randoms(C) : NULL;
    double *mref = pw_grad == 2 ? (double *)malloc(sizeof(double) * npix * C) : NULL;
    for (int n = 0; mref && n < N; ++n)
        for (int oh = 0; oh < Ho; ++oh)
            for (int ow = 0; ow < Wo; ++ow)
                for (int c = 0; c < C; ++c) {
                    double v = bdw ? bdw[c] : 0.0;
                    for (int kh = 0; kh < KH; ++kh)
                        for (int kw = 0; kw < KW; ++kw) {
                            int ih = oh * sh - ph + kh, iw = ow * sw - pw + kw;
                            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                                v += (double)x[(((size_t)n * H + ih) * W + iw) * C + c] * wdw[((size_t)c * KH + kh) * KW + kw];
                        }
                    mref[(((size_t)n * Ho + oh) * Wo + ow) * C + c] = v;
                }
    double *gm = (double *)malloc(sizeof(double) * npix * C), *gma = (double *)malloc(sizeof(double) * npix * C);
    ++checks;
    if (sepconv_dwpw_backward_f32(x, N, H, W, C, wdw, bdw, KH, KW, sh, sw, ph, pw, gy, Cout, wpw, mid,
                                  want_gx ? gx : NULL, gw, gb, gwpw,
                                  band, groups, 0, threads)) {
        ++failures;
        return;
    }
    if (want_gx) { /* gx written with non-temporal stores: the same bits */
        float *gxs = (float *)aligned_alloc(64, (ngx * sizeof(float) + 63) / 64 * 64);
        float *gws = randoms((size_t)KH * KW * C), *gbs = bias ? randoms(C) : NULL;
        float *gwpws = pw_grad ? randoms((size_t)Cout * C) : NULL;
        for (size_t i = 0; i < ngx; ++i) gxs[i] = NAN;
        ++checks;
        if (sepconv_dwpw_backward_f32(x, N, H, W, C, wdw, bdw, KH, KW, sh, sw, ph, pw, gy, Cout, wpw, mid, gxs, gws,
                                      gbs, gwpws, band, groups, 1, threads)
            || memcmp(gxs, gx, ngx * sizeof(float)) != 0) {
            ++failures;
            fprintf(stderr, "FAIL %s: gx streamed differs from gx stored\n", what);
        }
        free(gxs); free(gws); free(gbs); free(gwpws);
    }
    for (size_t p = 0; p < npix; ++p)
        for (int c = 0; c < C; ++c) {
            double v = 0, a = 0;
            for (int j = 0; j < Cout; ++j) {
                double t = (double)gy[p * Cout + j] * wpw[(size_t)j * C + c];
                v += t;
                a += fabs(t);
            }
            gm[p * C + c] = v;
            gma[p * C + c] = a; /* the magnitude of the sum's terms: the float32 error scales with it */
        }
    for (int n = 0; want_gx && n < N; ++n)
        for (int ih = 0; ih < H; ++ih)
            for (int iw = 0; iw < W; ++iw)
                for (int c = 0; c < C; ++c) {
                    double v = 0, a = 1;
                    for (int kh = 0; kh < KH; ++kh)
                        for (int kw = 0; kw < KW; ++kw) {
                            int th = ih + ph - kh, tw = iw + pw - kw, oh = th / sh, ow = tw / sw;
                            if (th < 0 || tw < 0 || th % sh || tw % sw || oh >= Ho || ow >= Wo) continue;
                            size_t at = (((size_t)n * Ho + oh) * Wo + ow) * C + c;
                            double w = wdw[((size_t)c * KH + kh) * KW + kw];
                            v += gm[at] * w;
                            a += gma[at] * fabs(w);
                        }
                    size_t at = (((size_t)n * H + ih) * W + iw) * C + c;
                    expect_close(what, (int)at, gx[at], v, a);
                }
    for (int kh = 0; kh < KH; ++kh)
        for (int kw = 0; kw < KW; ++kw)
            for (int c = 0; c < C; ++c) {
                double v = 0, a = 1;
                for (int n = 0; n < N; ++n)
                    for (int oh = 0; oh < Ho; ++oh)
                        for (int ow = 0; ow < Wo; ++ow) {
                            int ih = oh * sh - ph + kh, iw = ow * sw - pw + kw;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                            size_t at = (((size_t)n * Ho + oh) * Wo + ow) * C + c;
                            double xv = x[(((size_t)n * H + ih) * W + iw) * C + c];
                            v += gm[at] * xv;
                            a += gma[at] * fabs(xv);
                        }
                int at = (c * KH + kh) * KW + kw;
                expect_close(what, at, gw[at], v, a);
            }
    for (int c = 0; bias && c < C; ++c) {
        double v = 0, a = 1;
        for (size_t p = 0; p < npix; ++p) {
            v += gm[p * C + c];
            a += gma[p * C + c];
        }
        expect_close(what, c, gb[c], v, a);
    }
    for (int j = 0; pw_grad && j < Cout; ++j)
        for (int c = 0; c < C; ++c) {
            double v = 0, a = 1;
            for (size_t p = 0; p < npix; ++p) {
                double t = (double)gy[p * Cout + j] * (mid ? mid[p * C + c] : mref[p * C + c]);
                v += t;
                a += fabs(t);
            }
            expect_close(what, j * C + c, gwpw[(size_t)j * C + c], v, a);
        }
    free(x); free(wdw); free(gy); free(wpw); free(gx); free(gw); free(gb); free(gm); free(gma); free(mid); free(gwpw);
    free(bdw); free(mref);
}

static void check_backward(int N, int H, int W, int C, int KH, int KW, int sh, int sw, int ph, int pw, int Cout,
                           int bias, int band, int threads, int pw_grad) {
    check_backward_gx(N, H, W, C, KH, KW, sh, sw, ph, pw, Cout, bias, band, threads, pw_grad, 1, 1);
}

int main(void) {
    static const int channels[] = {1, 3, 4, 5, 8, 13, 16, 20, 32, 37, 64};
    static const int couts[] = {1, 7, 16, 24, 32, 33, 70};
    int i = 0;
    for (size_t ci = 0; ci < sizeof channels / sizeof *channels; ++ci)
        for (int K = 1; K <= 7; K += 2)
            for (int s = 1; s <= 2; ++s) {
                int C = channels[ci], Cout = couts[(ci + K + s) % (sizeof couts / sizeof *couts)];
                int d = (i % 5 == 4) ? 2 : 1, pad = (i % 3 == 0) ? 0 : (K / 2) * d;
                int H = 5 + (i * 7) % 14, W = 4 + (i * 5) % 17;
                if (H + 2 * pad < d * (K - 1) + 1 || W + 2 * pad < d * (K - 1) + 1) { ++i; continue; }
                int tile = 6 + (i * 11) % 60, groups = 1 + (Cout > 32 && i % 2);
                check_fused(1 + i % 2, H, W, C, K, s, pad, d, Cout, i % 4 != 1, i % 3, (i + 1) % 3, tile, groups,
                            i % 2);
                if (C <= 37) check_wgrad(1 + i % 2, H, W, C, K, s, pad, d, 1 + i % 2);
                ++i;
            }
    /* 3x3 weight gradients at strides 1-3: rows narrower than the kernel up to wide ones, paddings 0-2, whole and
     * partial channel vectors (the row-at-a-time step keeps the nine sums in registers) */
    static const int wg_channels[] = {8, 19, 40, 64};
    for (int s = 1; s <= 3; ++s)
        for (int W = 1; W <= 13; W += (W < 5 ? 1 : 8))
            for (int pad = 0; pad <= 2; ++pad)
                for (size_t ci = 0; ci < sizeof wg_channels / sizeof *wg_channels; ++ci)
                    if (W + 2 * pad >= 3) check_wgrad(2, 7, W, wg_channels[ci], 3, s, pad, 1, 1 + (int)ci % 2);
    /* rows long enough that the AVX2 and NEON builds take them in chunks of blocks (wgrad3_row): chunk boundaries
     * at border and clean blocks, a last chunk shorter than the others, paddings 0-2 */
    static const int long_rows[][2] = {{64, 45}, {64, 61}, {40, 77}, {16, 200}, {128, 30}, {256, 17}};
    for (size_t k = 0; k < sizeof long_rows / sizeof *long_rows; ++k)
        check_wgrad(1 + (int)k % 2, 4, long_rows[k][1], long_rows[k][0], 3, 1, (int)k % 3, 1, 1 + (int)k / 3);
    /* depthwise steps on their own at stride 1 and the flat weight gradient (few channels; with AVX2 or NEON also
     * a partial last vector): 1-12 channels, rows narrower than the kernel up to several vectors, paddings 0 to the
     * kernel's extent, dilations 1-2, kernel widths 1-5, one to three threads over bands of rows */
    static const int few[] = {1, 2, 3, 4, 5, 7, 8, 9, 12};
    int j = 0;
    for (size_t ci = 0; ci < sizeof few / sizeof *few; ++ci)
        for (int K = 1; K <= 5; K += 2)
            for (int W = 1; W <= 23; W += 7)
                for (int d = 1; d <= 2; ++d, ++j) {
                    int C = few[ci], ext = d * (K - 1), pad = j % 3 == 0 ? 0 : (j % 3 == 1 ? ext / 2 : ext);
                    int H = 3 + (j * 5) % 19, KH = K == 5 && j % 2 ? 3 : K;
                    int padh = KH == K ? pad : (d * (KH - 1)) / 2;
                    if (W + 2 * pad < ext + 1 || H + 2 * padh < d * (KH - 1) + 1) continue;
                    check_depthwise(1 + j % 2, H, W, C, KH, K, padh, pad, d, d, j % 2, 1 + j % 3);
                    if (KH == K && padh == pad) check_wgrad(1 + j % 2, H, W, C, K, 1, pad, d, 1 + j % 3);
                }
    check_depthwise(2, 32, 32, 3, 3, 3, 1, 1, 1, 1, 1, 2); /* an RGB CIFAR input */
    check_depthwise(1, 30, 33, 3, 3, 3, 2, 2, 1, 1, 0, 2); /* the flipped kernel's padding (input gradient) */
    check_wgrad(2, 32, 32, 3, 3, 1, 1, 1, 2);
    /* the flat path with the most padding a layer takes (kernel - 1): the right margin reaches pw pixels */
    for (int C = 1; C <= 4; ++C) {
        check_fused(1, 9, 6, C, 5, 1, 4, 1, 16, 1, 0, 0, 40, 1, 0);
        check_fused(2, 7, 10, C, 7, 1, 6, 1, 20, 0, 1, 0, 25, 1, 1);
        check_fused(1, 5, 14, C, 9, 1, 8, 1, 8, 1, 0, 2, 30, 1, 0);
    }
    check_fused(2, 32, 32, 32, 3, 1, 1, 1, 64, 1, 1, 1, 96, 1, 1); /* a CIFAR-like layer, several tiles */
    check_fused(1, 15, 15, 64, 3, 2, 1, 1, 128, 1, 2, 0, 30, 2, 0);
    /* 1x1 weights of AHEAD_MIN_BYTES or more, tiles of at most AHEAD_MAX_ROWS (blocks that prefetch the next
     * panel): a 7x7 tile, a tile of 13 (AVX-512: the 7-row block prefetches), blocks of fewer rows, one block per
     * panel, a last panel of one column, partial channel vectors, channel groups, streamed output */
    check_fused(1, 7, 7, 256, 3, 1, 1, 1, 512, 1, 0, 0, 49, 1, 0);
    check_fused(1, 9, 9, 300, 3, 2, 1, 1, 440, 0, 1, 2, 8, 1, 0);
    check_fused(1, 7, 7, 256, 3, 1, 1, 1, 520, 0, 0, 0, 13, 1, 0);
    check_fused(1, 5, 5, 260, 3, 1, 1, 1, 512, 1, 0, 1, 5, 2, 1);
    check_fused(2, 4, 4, 4096, 1, 1, 0, 1, 33, 1, 0, 0, 11, 1, 0);
    check_fused(1, 14, 14, 512, 3, 2, 1, 1, 288, 1, 2, 0, 49, 1, 1);
    /* rows of several interior blocks for the AVX-512 3x3 runs (depthwise3_rows): row pairs and single rows (a
     * tile's partial rows, an odd last row), both borders, a short last block, padding 0 and 1, activations */
    check_fused(2, 9, 45, 32, 3, 1, 1, 1, 24, 1, 1, 2, 50, 1, 0);
    check_fused(1, 8, 61, 48, 3, 1, 0, 1, 40, 0, 2, 0, 77, 1, 0);
    check_fused(1, 11, 70, 16, 3, 1, 1, 1, 32, 1, 0, 1, 150, 2, 1);
    check_fused(1, 8, 70, 32, 3, 1, 1, 1, 24, 1, 0, 0, 560, 1, 0); /* interior row pairs of seven blocks */
    /* 3x3 row segments whose border blocks and rows take the padding inside the same run: images of one to three
     * rows or pixels, padding 2 and 3 (windows that start two or three columns outside, rows that only padding
     * reaches), segments that start or end inside a row (short tiles), channel counts of one to four vectors */
    for (int k = 0; k < 32; ++k) {
        int H = 1 + (k * 5) % 7, W = 1 + (k * 7) % 19, pad = k % 4;
        if (H + 2 * pad >= 3 && W + 2 * pad >= 3)
            check_fused(1 + k % 2, H, W, 16 * (1 + (k / 3) % 4), 3, 1, pad, 1, couts[k % 7], k % 2, k % 3, (k + 1) % 3,
                        6 + (k * 17) % 40, 1, k % 2);
    }
    /* 3x3 layers of 64 channels or more at strides 1 and 2 (the AVX2 and NEON paths' eight-pixel blocks over every
     * channel vector up to 256 channels, their four-pixel, two-vector blocks past it and at stride 2): whole,
     * partial and single channel vectors past the pairs, rows narrower than a block, both paddings, odd and even
     * widths, tiles across rows */
    static const int wide[] = {64, 72, 100, 128, 256, 264};
    for (int k = 0; k < 36; ++k) { /* each channel count at both strides, with and without padding, bias, streaming */
        int i = k % 6, j = k / 6;
        check_fused(1 + j % 2, 3 + (k * 5) % 11, 3 + (k * 7) % 13, wide[i], 3, 1 + j % 2, (i + j) % 3 ? 1 : 0, 1,
                    couts[k % 7], (i + j / 2) % 2, (i + 2 * j) % 3, (i + j + 1) % 3, 6 + (k * 13) % 50, 1, j / 3);
    }
    /* 3x3 layers at stride 2 on whole channel vectors (the AVX-512 path's blocks of up to eight pixels of a row):
     * odd and even heights and widths (the last input row or column in the padding or not), rows of zero to four
     * whole blocks and a shorter last one, paddings 0-3, tiles that start and end inside a row */
    for (int k = 0; k < 40; ++k) {
        int H = 1 + (k * 3) % 10, W = 2 + (k * 11) % 39, pad = k % 4;
        if (H + 2 * pad >= 3 && W + 2 * pad >= 3)
            check_fused(1 + k % 2, H, W, 16 * (1 + k % 4), 3, 2, pad, 1, couts[k % 7], (k / 2) % 2, k % 3, (k + 2) % 3,
                        5 + (k * 13) % 60, 1, (k / 4) % 2);
    }
    /* 3x3 layers at stride 2 in whole rows of eight-pixel blocks, two rows at a time where their five input rows
     * are inside the image (depthwise3s2_rows): row lengths that are and are not multiples of eight (a last block
     * overlapping the one before it) and too short for a block, tiles of one to three rows and ones that start
     * inside a row, odd and even heights (a last pair reaching the padding), paddings 0-2 */
    for (int k = 0; k < 24; ++k) {
        int H = 6 + (k * 7) % 23, W = 13 + (k * 5) % 44, pad = k % 3;
        int Wo = (W + 2 * pad - 3) / 2 + 1, tile = Wo * (1 + k % 3) + (k % 4 == 3 ? 3 : 0);
        check_fused(1 + k % 2, H, W, 16 * (1 + k % 4), 3, 2, pad, 1, couts[k % 7], k % 2, k % 3, (k + 1) % 3, tile,
                    1, (k / 5) % 2);
    }
    check_fused(1, 112, 112, 64, 3, 2, 1, 1, 128, 0, 0, 0, 112, 1, 0); /* MobileNetV1's 64 -> 128 @112 s2 */
    static const int dims[][3] = {{1, 1, 1}, {7, 3, 5}, {50, 16, 16}, {300, 12, 32}, {129, 24, 48}, {700, 64, 40},
                                  {65, 33, 70}, {1000, 6, 17}, {5000, 20, 24}, {5000, 13, 10}};
    for (size_t k = 0; k < sizeof dims / sizeof *dims; ++k)
        for (int threads = 1; threads <= 2; ++threads) check_atb(dims[k][0], dims[k][1], dims[k][2], threads);
    /* no pixels (out written as zeros), and several chunks of pixels (the first writes out, the rest add), with
     * blocks or pixels split between the threads */
    for (int threads = 1; threads <= 2; ++threads) {
        check_atb(0, 5, 7, threads);
        check_atb(2000, 100, 200, threads);
        check_atb(2100, 100, 200, threads); /* enough pixels that two threads split them, not out's blocks */
        check_atb(4100, 64, 64, threads);
        check_atb(5000, 12, 32, threads);
        /* A's rows 256 floats or more apart (the vector path packs A too) with a partial last row block, partial
         * column slivers, several packed chunks, and block ranges that split an n-block between the threads */
        check_atb(600, 253, 50, threads);
        check_atb(300, 270, 70, threads);
        check_atb(257, 252, 9, threads);
        check_atb(300, 260, 20, threads); /* one n-block: the second thread's rows start past row 0 */
    }
    static const int gdims[][3] = {{1, 1, 1}, {7, 3, 5}, {13, 16, 16}, {50, 32, 64}, {97, 24, 48}, {300, 64, 40},
                                   {65, 33, 70}, {200, 6, 17}};
    for (size_t k = 0; k < sizeof gdims / sizeof *gdims; ++k)
        for (int t = 0; t < 2; ++t)
            check_gemm(gdims[k][0], gdims[k][1], gdims[k][2], t, (int)(k + t) % 2, 6 + 7 * (int)k, 1 + t);
    /* the backward kernel: kernel sizes 1-7 (odd and even, square or not), every valid padding, whole and partial
     * channel vectors and panels, bands of 1 row to whole images, images split between threads or not */
    for (int k = 0; k < 40; ++k) {
        int KH = 1 + k % 7, KW = 1 + (k * 3) % 7, C = channels[k % 11], Cout = couts[(k * 5) % 7];
        int ph = (k / 3) % KH, pw = (k / 2) % KW, H = 3 + (k * 7) % 13, W = 2 + (k * 5) % 19;
        if (H + 2 * ph < KH || W + 2 * pw < KW) continue;
        check_backward(1 + k % 3, H, W, C, KH, KW, 1, 1, ph, pw, Cout, k % 2, k % 4 == 0 ? 0 : 1 + k % 5, 1 + k % 2,
                       k % 3);
        /* strided: 2 (MobileNet's downsampling layers) and 3 (strides above the kernel size leave gx pixels that no
         * tap reaches, which must be zero), the same in both directions or not */
        int sh = 2 + k % 2, sw = 2 + (k / 2) % 2 - (k % 5 == 0);
        check_backward(1 + k % 3, H, W, C, KH, KW, sh, sw, ph, pw, Cout, k % 2, k % 4 == 0 ? 0 : 1 + k % 5,
                       1 + k % 2, (k + 1) % 3);
        /* the channels split into groups of whole panels (one group where there is one panel) */
        check_backward_gx(1 + k % 2, H, W, C + 40, KH, KW, 1 + k % 2, 1 + (k / 2) % 2, ph, pw, Cout, k % 2,
                          k % 4 == 0 ? 0 : 1 + k % 5, 1 + k % 3, (k + 2) % 3, k % 7 != 0, 2 + k % 3);
    }
    check_backward(3, 32, 32, 64, 3, 3, 1, 1, 1, 1, 64, 0, 0, 2, 1); /* a CIFAR-like layer */
    check_backward(1, 28, 28, 32, 3, 3, 1, 1, 1, 1, 48, 1, 0, 2, 1); /* one image split between the threads */
    check_backward(1, 9, 12, 24, 5, 5, 1, 1, 2, 2, 40, 1, 2, 3, 1);
    check_backward(2, 6, 7, 100, 3, 3, 1, 1, 1, 1, 45, 0, 0, 2, 1); /* several 12 x 32 blocks of the 1x1 gradient */
    check_backward(1, 56, 56, 64, 3, 3, 2, 2, 1, 1, 128, 0, 0, 2, 1); /* MobileNetV1's stride-2 layers */
    check_backward(2, 15, 15, 40, 3, 3, 2, 2, 1, 1, 24, 1, 0, 2, 1); /* an odd size: the last row has one tap row */
    check_backward(1, 29, 14, 48, 3, 3, 2, 2, 0, 1, 32, 1, 3, 3, 1); /* one image split between three threads */
    check_backward(2, 10, 9, 17, 4, 3, 2, 1, 3, 2, 20, 0, 1, 2, 1); /* even kernel, one-row bands */
    check_backward(1, 12, 11, 40, 3, 3, 1, 1, 1, 1, 260, 1, 0, 2, 1); /* 1x1 gradient rows 260 floats apart */
    /* mid recomputed in the bands: a CIFAR-like layer, an image split between threads, stride 2, one-row bands */
    check_backward(3, 32, 32, 64, 3, 3, 1, 1, 1, 1, 64, 1, 0, 2, 2);
    check_backward(1, 28, 28, 32, 3, 3, 1, 1, 1, 1, 48, 0, 0, 2, 2);
    check_backward(1, 56, 56, 64, 3, 3, 2, 2, 1, 1, 128, 1, 0, 2, 2);
    check_backward(2, 10, 9, 17, 4, 3, 2, 1, 3, 2, 20, 1, 1, 3, 2);
    /* no input gradient (a network's first layer): the other gradients alone, strides 1 and 2, split images */
    check_backward_gx(2, 16, 16, 3, 3, 3, 1, 1, 1, 1, 64, 1, 0, 2, 2, 0, 1);
    check_backward_gx(1, 28, 28, 32, 3, 3, 1, 1, 1, 1, 48, 0, 3, 2, 1, 0, 1);
    check_backward_gx(1, 30, 30, 24, 3, 3, 2, 2, 1, 1, 40, 1, 0, 2, 2, 0, 1);
    check_backward_gx(3, 9, 11, 17, 5, 3, 1, 2, 2, 1, 20, 0, 2, 1, 0, 0, 1);
    /* Backward cases, one row each: N, H, W, C, KH, KW, sh, sw, ph, pw, Cout, bias, band, threads, pw_grad, gx,
     * groups. Few channels (a first layer): the 1x1 input gradient as dot products, its weight gradient summed
     * transposed; Cout a multiple of the vector width or not, with and without gx, one and two threads. Channel
     * groups: MobileNetV1's deep layers at batch 1 (whole and partial panels, stride 1 and 2), more groups than
     * panels, more groups than threads, the 1x1 gradient from a given or a recomputed mid, no gx. */
    static const int bcases[][17] = {
        {4, 16, 16, 3, 3, 3, 1, 1, 1, 1, 64, 1, 0, 2, 2, 0, 1},
        {2, 12, 10, 1, 3, 3, 1, 1, 1, 1, 20, 0, 0, 1, 1, 1, 1},
        {1, 15, 17, 4, 5, 5, 2, 2, 2, 2, 37, 1, 3, 2, 2, 1, 1},
        {3, 9, 9, 2, 3, 3, 1, 1, 1, 1, 130, 0, 0, 2, 1, 0, 1},
        {2, 8, 8, 12, 3, 3, 1, 1, 1, 1, 48, 1, 0, 2, 2, 1, 1}, /* transposed sums, panel GEMM */
        {1, 7, 7, 256, 3, 3, 1, 1, 1, 1, 256, 1, 0, 2, 1, 1, 2},
        {1, 14, 14, 100, 3, 3, 2, 2, 1, 1, 128, 0, 0, 2, 2, 1, 2},
        {1, 14, 14, 70, 3, 3, 1, 1, 1, 1, 90, 1, 0, 3, 2, 1, 3},
        {1, 6, 5, 64, 3, 3, 1, 1, 1, 1, 48, 1, 1, 3, 1, 1, 4},
        {2, 9, 8, 130, 5, 5, 1, 1, 2, 2, 40, 1, 2, 2, 0, 1, 5},
        {1, 12, 11, 96, 4, 3, 2, 1, 3, 2, 33, 0, 0, 1, 2, 1, 2},
        {1, 10, 10, 64, 3, 3, 1, 1, 1, 1, 32, 1, 0, 2, 1, 0, 2},
        /* rows wide enough for whole windows of the strided adjoint (adjoint_window): 3- and 5-wide kernels,
         * padding 0-2 (windows from column 0 or 1, left columns outside gm), odd widths (a short last window),
         * channels past the last whole vector, channel groups, rows that no tap reaches (stride 3, 2 tall) */
        {1, 40, 70, 40, 3, 3, 2, 2, 1, 1, 24, 0, 0, 2, 1, 1, 1},
        {2, 21, 53, 17, 5, 5, 2, 2, 2, 2, 20, 1, 2, 1, 2, 1, 1},
        {1, 18, 45, 32, 3, 3, 2, 2, 0, 0, 16, 0, 0, 2, 0, 1, 1},
        {1, 16, 38, 64, 5, 5, 2, 2, 1, 1, 48, 1, 0, 2, 1, 1, 2},
        {1, 20, 51, 24, 2, 3, 3, 2, 1, 1, 16, 0, 0, 1, 1, 1, 1},
        /* stride 1, rows of several interior blocks: the input gradient and the recomputed mid through the
         * AVX-512 3x3 runs (depthwise3_rows) */
        {1, 12, 66, 32, 3, 3, 1, 1, 1, 1, 40, 1, 0, 2, 2, 1, 1},
        {2, 9, 58, 48, 3, 3, 1, 1, 1, 1, 24, 0, 3, 1, 2, 1, 1},
    };
    for (size_t k = 0; k < sizeof bcases / sizeof *bcases; ++k) {
        const int *b = bcases[k];
        check_backward_gx(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                          b[14], b[15], b[16]);
    }
    printf("isa=%s checks=%d failures=%d\n", sepconv_isa(), checks, failures);
    return failures ? 1 : 0;
}
