/* Fused depthwise -> pointwise convolution, float32, NHWC, inference (sepconv.fused).
 *
 * For a tile of output pixels the depthwise result is computed into a small
 * buffer (sized to stay in the L2 cache) and multiplied at once by the
 * pointwise weight, so the intermediate tensor never goes to DRAM. The
 * pointwise product is a register-blocked GEMM: MR pixels x NR output
 * channels of accumulators, the pointwise weight packed as [C][Cout_padded].
 * AVX-512 intrinsics where the compiler targets AVX-512F, else AVX2 + FMA or
 * NEON vectors (simd.h), else portable loops (auto-vectorized). Plain C with optional OpenMP, no Python or
 * PyTorch headers: built by sepconv.fused with the system C compiler and
 * loaded with ctypes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "simd.h"
#include "wgrad_steps.h"

#ifndef MR
#define MR 6  /* pixels per register block */
#endif
#define FLAT_ALIGN 4096 /* alignment of the flat path's padded input rows (see flat_row_floats) */
static inline size_t round_up(size_t bytes, size_t to) { return (bytes + to - 1) / to * to; }
/* GCC's specialized copies of a function (constant-propagation clones) get their own register allocation: the copy
 * of pointwise_tile that sepconv_gemm_f32 called kept one of the AVX2 register block's twelve accumulators on the
 * stack (a store and a reload on its FMA chain every input channel, with a vector register unused), and ran the
 * 1x1 GEMM at about half the shared copy's rate (GCC 12; docs/design-notes.md has the record). */
#if defined(__GNUC__) && !defined(__clang__)
#define NOCLONE __attribute__((noclone))
#else
#define NOCLONE
#endif
#define NR 32 /* output channels per register block (two AVX-512 vectors) and per packed weight panel */
/* The pointwise step prefetches each next panel of a 1x1 weight while it computes on the current one
 * (pointwise_step) for a weight of at least AHEAD_MIN_BYTES and a tile of at most AHEAD_MAX_ROWS pixels. A smaller
 * weight stays in the L2 cache from one tile to the next, and a taller tile reads each panel from cache in so many
 * register blocks that the first block's wait is a small part of the time: there the look-ahead's checks cost more
 * than they save. */
#define AHEAD_MIN_BYTES (512 * 1024)
#define AHEAD_MAX_ROWS 64

/* The lines a register block prefetches while it computes: `left` 64-byte lines from `next`, one at each input
 * channel c with (c & every) == 0 (every = 2^k - 1); both advance past the lines it prefetched. */
typedef struct {
    const char *next;
    long left;
    int every;
} ahead_t;

/* The look-ahead over one weight panel of C rows (NR floats each): the next panel's lines, spread evenly over the
 * `passes` passes (register blocks, or AVX2/NEON 16-column halves) after a panel's first (whose own reads are the
 * ones to wait on memory), each pass prefetching in about the first half of its channels. */
static inline ahead_t panel_ahead(const float *panel, int C, int passes) {
    ahead_t a = {(const char *)(panel + (size_t)C * NR), (long)C * NR * (long)sizeof(float) / 64, 0};
    passes = passes > 1 ? passes - 1 : 1;
    long per_pass = (a.left + passes - 1) / passes;
    while (per_pass && 2 * (a.every + 1) * per_pass <= C) a.every = 2 * a.every + 1;
    return a;
}
/* input channels up to which the backward kernel takes the 1x1 input gradient as dot products (few_channel_rows):
 * per row it costs about C (Cout / VB + a horizontal sum) instructions against the panel GEMM's 2 Cout */
#define FEW_CHANNELS 4
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_RELU6 2

static inline float act1(float v, int act) {
    if (act == ACT_RELU) return v > 0.f ? v : 0.f;
    if (act == ACT_RELU6) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    return v;
}

/* Marks a parallel call as failed (a thread could not allocate its buffer; its jobs are skipped, the call returns -1). */
static inline void mark_failed(int *failed) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
    *failed = 1;
}

/* The vector instruction set the library was built with: "avx512", "avx2", "neon" or "scalar" (simd.h). */
const char *sepconv_isa(void) { return SEPCONV_ISA_NAME; }

int sepconv_fused_has_avx512(void) {
#ifdef SEPCONV_AVX512
    return 1;
#else
    return 0;
#endif
}

#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
#ifndef FLAT_MAX_C
#define FLAT_MAX_C 4
#endif
static void flat_patterns(const float *wdw, const float *bdw, int KH, int KW, int C, float *wpat, float *bpat) {
    for (int tap = 0; tap < KH * KW; ++tap)
        for (int phase = 0; phase < C; ++phase)
            for (int lane = 0; lane < 16; ++lane)
                wpat[((size_t)tap * C + phase) * 16 + lane] = wdw[(size_t)tap * C + (phase + lane) % C];
    for (int phase = 0; phase < C; ++phase)
        for (int lane = 0; lane < 16; ++lane) bpat[phase * 16 + lane] = bdw ? bdw[(phase + lane) % C] : 0.f;
}

/* The flat path's zero-padded input rows: margins of the floats the taps reach left and right of a row (the
 * padding, pw pixels each side: output float f of a row of Wo = W + 2 pw - (KW - 1) dw pixels reads up to input
 * float f + ((KW - 1) dw - pw) C < (W + pw) C), plus 16 on the right for the last, partial vector (its extra lanes
 * are computed and not stored). A row of up to 4 KiB takes a power-of-two stride, so that in a page-aligned buffer
 * (FLAT_ALIGN) no row straddles a page: the taps' vector loads are unaligned (offsets of C floats), and rows that
 * straddled pages made a layer markedly slower (docs/design-notes.md). Longer rows cross pages wherever they
 * start. */
static inline long flat_left(int pw, int C) { return (long)pw * C; }
static inline long flat_row_used(int W, int C, int pw) {
    return (2 * flat_left(pw, C) + (long)W * C + 16 + 15) / 16 * 16;
}
static inline long flat_row_floats(int W, int C, int pw) {
    long floats = flat_row_used(W, C, pw), pow2 = 16;
    if (floats * (long)sizeof(float) > FLAT_ALIGN) return floats;
    while (pow2 < floats) pow2 *= 2;
    return pow2;
}

/* Input rows [ih_lo, ih_hi] of one image into rows (stride prow), zero-padded at both ends (the floats the taps
 * read, flat_row_used; the rest of a row's stride is never read). */
static void flat_pad_rows(const float *x, int W, int C, int pw, int ih_lo, int ih_hi, long prow, float *rows) {
    long left = flat_left(pw, C), width = (long)W * C, used = flat_row_used(W, C, pw);
    for (int ih = ih_lo; ih <= ih_hi; ++ih) {
        float *dst = rows + (long)(ih - ih_lo) * prow;
        memset(dst, 0, sizeof(float) * left);
        memcpy(dst + left, x + (size_t)ih * width, sizeof(float) * width);
        memset(dst + left + width, 0, sizeof(float) * (used - left - width));
    }
}

#endif

#ifdef SEPCONV_AVX512
static inline __m512 act16(__m512 v, int act) {
    if (act == ACT_NONE) return v;
    v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == ACT_RELU6) v = _mm512_min_ps(v, _mm512_set1_ps(6.f));
    return v;
}
#define SLIDE 8 /* output pixels per sliding-window block (stride 1, dilation 1) */
#ifndef EDGE_MIN
#define EDGE_MIN 2 /* border blocks of at least this many pixels take the sliding window */
#endif

/* The sliding window's shared pieces (always inlined: with a constant kernel width the arrays stay in registers).
 * window_row: input vectors q = 0 .. SLIDE + KWC - 2 of one input row at columns iw0 + q, channels [c, c + 16) (row
 * points at column 0, channel c), zero outside [q_lo, q_hi); nc == 16 takes plain loads (masked ones cost more on AMD
 * Zen even with a full mask). window_fma: one kernel row's KWC taps (wrow: its weights at channel c) into SLIDE
 * accumulators. prefetch_window: the SLIDE pixels from column iw0 of another row. */
static inline __attribute__((always_inline)) void window_row(const float *row, int iw0, int C, int KWC, int q_lo,
                                                             int q_hi, int nc, __mmask16 k, __m512 *in) {
    const float *pq = row + (ptrdiff_t)iw0 * C;
    if (nc == 16) {
#pragma GCC unroll 16
        for (int q = 0; q < SLIDE + KWC - 1; ++q) {
            in[q] = q >= q_lo && q < q_hi ? _mm512_loadu_ps(pq) : _mm512_setzero_ps();
            pq += C;
            OPAQUE_POINTER(pq);
        }
    } else {
#pragma GCC unroll 16
        for (int q = 0; q < SLIDE + KWC - 1; ++q) {
            in[q] = q >= q_lo && q < q_hi ? _mm512_maskz_loadu_ps(k, pq) : _mm512_setzero_ps();
            pq += C;
            OPAQUE_POINTER(pq);
        }
    }
}

static inline __attribute__((always_inline)) void window_fma(const __m512 *in, const float *wrow, int C, int KWC,
                                                             __mmask16 k, __m512 *acc) {
#pragma GCC unroll 8
    for (int kw = 0; kw < KWC; ++kw) {
        __m512 wv = _mm512_maskz_loadu_ps(k, wrow + (size_t)kw * C);
#pragma GCC unroll 16
        for (int j = 0; j < SLIDE; ++j) acc[j] = _mm512_fmadd_ps(in[j + kw], wv, acc[j]);
    }
}

static inline __attribute__((always_inline)) void prefetch_window(const float *row, int iw0, int C, int c) {
    const float *next = row + (size_t)iw0 * C + c;
#pragma GCC unroll 8
    for (int j = 0; j < SLIDE; ++j) _mm_prefetch((const char *)(next + (size_t)j * C), _MM_HINT_T0);
}

/* SLIDE adjacent output pixels of one row, stride 1 and dilation 1, kernel width KWC (a constant after inlining,
 * so the window stays in registers): each kernel row's SLIDE + KWC - 1 input vectors are loaded once and shared by
 * the SLIDE outputs (KWC taps each), instead of loaded once per tap; SLIDE independent accumulators. Kernel rows
 * [kh_lo, kh_hi) and window columns [q_lo, q_hi) are inside the input (the others are zero padding: skipped rows,
 * zero vectors); the first `cnt` outputs are stored. The interior call passes constants (all rows, all columns,
 * SLIDE outputs), so after inlining its loop has no checks; border blocks take the same loop with the checks. */
static inline __attribute__((always_inline)) void depthwise_slide(const float *x, int W, int C, const float *wdw,
                                                                  const float *bdw, int kh_lo, int kh_hi,
                                                                  int KWC, int ih0, int iw0, int dh, int q_lo,
                                                                  int q_hi, int cnt, int act, float *out, int cp,
                                                                  const float *prefetch_row) {
    for (int c = 0; c < C; c += 16) {
        int nc = C - c < 16 ? C - c : 16;
        __mmask16 k = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1);
        __m512 b = bdw ? _mm512_maskz_loadu_ps(k, bdw + c) : _mm512_setzero_ps();
        __m512 acc[SLIDE];
        for (int j = 0; j < SLIDE; ++j) acc[j] = b;
        if (prefetch_row) prefetch_window(prefetch_row, iw0, C, c); /* the row the next output row adds */
        for (int kh = kh_lo; kh < kh_hi; ++kh) {
            __m512 in[SLIDE + 6];
            window_row(x + (size_t)(ih0 + kh * dh) * W * C + c, iw0, C, KWC, q_lo, q_hi, nc, k, in);
            window_fma(in, wdw + (size_t)kh * KWC * C + c, C, KWC, k, acc);
        }
#pragma GCC unroll 8
        for (int j = 0; j < SLIDE; ++j)
            if (j < cnt) _mm512_store_ps(out + (size_t)j * cp + c, act16(acc[j], act));
    }
}

/* At most FLAT_MAX_C channels, stride 1 both ways (the flat path): a vector of 16 channels would hold C useful
 * lanes (3 of 16 for an RGB input). In channels-last, the output pixels [ow0, ow0 + cnt) of one row are the
 * contiguous floats [ow0 C, (ow0 + cnt) C), and tap (kh, kw) reads the input floats at the same positions shifted
 * by (kw dw - pw) C in input row oh - ph + kh dh: a 1D convolution over the flat row whose weight repeats with
 * period C. So 16 consecutive output floats take one vector per tap, with the tap's weights laid out for the
 * vector's first channel (its phase): wpat[kh][kw][phase][16] and bpat[phase][16] (the bias), prepared once per
 * call by flat_patterns. The tile's input rows are first copied with zero margins (flat_pad_rows), so no tap
 * needs a bounds check (checks and masked loads at the row ends made the step markedly slower). The tile is then
 * packed (row stride cp = C). Each tap costs a weight load and an unaligned input load per FMA (the
 * channel-vector path shares its loads across 8 pixels), so the flat path pays only where the channel vectors
 * are mostly empty: FLAT_MAX_C channels or fewer (docs/design-notes.md, "Few channels"). */
/* lanes [0, n) of a 16-lane mask */
static inline __mmask16 first_lanes(long n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

/* Output vectors [k0, k0 + nv) of a row segment (output floats [16 k, 16 k + 16); nv <= 4: independent chains of
 * FMAs). rows: the tile's input rows, zero-padded (flat_pad_rows), row ih at rows + (ih - ih_lo) prow, so every
 * tap's 16 floats can be loaded without a check. */
static inline __attribute__((always_inline)) void flat_block(const float *rows, int ih_lo, long prow, int C,
                                                             const float *wpat, const float *bpat, int kh_lo,
                                                             int kh_hi, int KW, int oh, int ph, int pw, int dh,
                                                             int dw, int act, long f0, long k0, int nv, long n,
                                                             float *out) {
    __m512 acc[4];
    int phase[4]; /* the channel of each vector's first lane: which weight layout it takes */
#pragma GCC unroll 4
    for (int q = 0; q < nv; ++q) {
        phase[q] = (16 * (int)(k0 + q)) % C; /* f0 = ow0 C is a whole number of pixels; 32-bit: a cheaper division */
        acc[q] = _mm512_loadu_ps(bpat + phase[q] * 16);
    }
    for (int kh = kh_lo; kh < kh_hi; ++kh) {
        const float *row = rows + (oh - ph + kh * dh - ih_lo) * prow + f0 + 16 * k0;
        for (int kw = 0; kw < KW; ++kw) {
            const float *in = row + (long)(kw * dw - pw) * C;
            const float *wp = wpat + (size_t)(kh * KW + kw) * C * 16;
#pragma GCC unroll 4
            for (int q = 0; q < nv; ++q)
                acc[q] = _mm512_fmadd_ps(_mm512_loadu_ps(in + 16 * q), _mm512_loadu_ps(wp + phase[q] * 16), acc[q]);
        }
    }
#pragma GCC unroll 4
    for (int q = 0; q < nv; ++q) {
        long at = 16 * (k0 + q);
        if (n - at >= 16) /* plain stores where whole: masked ones are slow on AMD Zen even with a full mask */
            _mm512_storeu_ps(out + at, act16(acc[q], act));
        else
            _mm512_mask_storeu_ps(out + at, first_lanes(n - at), act16(acc[q], act));
    }
}

/* The sliding-window block for kernel widths 3, 5 and 7 (compile-time widths: see depthwise_slide). */
static inline __attribute__((always_inline)) void depthwise_slide_any(const float *x, int W, int C,
                                                                      const float *wdw, const float *bdw, int kh_lo,
                                                                      int kh_hi, int KW, int ih0, int iw0, int dh,
                                                                      int q_lo, int q_hi, int cnt, int act,
                                                                      float *out, int cp, const float *pf) {
    if (KW == 3) depthwise_slide(x, W, C, wdw, bdw, kh_lo, kh_hi, 3, ih0, iw0, dh, q_lo, q_hi, cnt, act, out, cp, pf);
    else if (KW == 5) depthwise_slide(x, W, C, wdw, bdw, kh_lo, kh_hi, 5, ih0, iw0, dh, q_lo, q_hi, cnt, act, out, cp, pf);
    else depthwise_slide(x, W, C, wdw, bdw, kh_lo, kh_hi, 7, ih0, iw0, dh, q_lo, q_hi, cnt, act, out, cp, pf);
}

/* One output pixel's channel blocks [c, c + 16 nb) (nb <= 4, independent chains of FMAs), any position: the taps
 * that fall in the zero padding are skipped. full: all nb blocks hold 16 channels (plain loads: masked ones cost
 * more on AMD Zen even with a full mask); else the last is masked. out: the pixel's tile row (stride >= C rounded
 * up to 16; masked-off lanes are stored as 0 or act(0)). */
static inline __attribute__((always_inline)) void pixel_blocks(const float *x, int H, int W, int C,
                                                               const float *wdw, const float *bdw, int KH, int KW,
                                                               int dh, int dw, int ih0, int iw0, int c, int nb,
                                                               int full, int act, float *out) {
    __m512 acc[4];
    __mmask16 km[4];
    for (int q = 0; q < nb; ++q) {
        int nc = C - c - 16 * q;
        km[q] = nc >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nc) - 1);
        acc[q] = bdw ? (full ? _mm512_loadu_ps(bdw + c + 16 * q) : _mm512_maskz_loadu_ps(km[q], bdw + c + 16 * q))
                     : _mm512_setzero_ps();
    }
    for (int kh = 0; kh < KH; ++kh) {
        int ih = ih0 + kh * dh;
        if (ih < 0 || ih >= H) continue;
        const float *row = x + (size_t)ih * W * C + c;
        const float *wrow = wdw + (size_t)kh * KW * C + c;
        for (int kw = 0; kw < KW; ++kw) {
            int iw = iw0 + kw * dw;
            if (iw < 0 || iw >= W) continue;
            const float *xp = row + (size_t)iw * C, *wp = wrow + (size_t)kw * C;
            for (int q = 0; q < nb; ++q)
                acc[q] = full ? _mm512_fmadd_ps(_mm512_loadu_ps(xp + 16 * q), _mm512_loadu_ps(wp + 16 * q), acc[q])
                              : _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km[q], xp + 16 * q),
                                                _mm512_maskz_loadu_ps(km[q], wp + 16 * q), acc[q]);
        }
    }
    for (int q = 0; q < nb; ++q) _mm512_store_ps(out + c + 16 * q, act16(acc[q], act));
}

/* One output pixel, all channels, any position (the taps in the zero padding skipped), four channel blocks at a
 * time (pixel_blocks). */
static inline void depthwise_pixel(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                                   int KW, int dh, int dw, int ih0, int iw0, int act, float *out) {
    int c = 0;
    for (; c + 64 <= C; c += 64) pixel_blocks(x, H, W, C, wdw, bdw, KH, KW, dh, dw, ih0, iw0, c, 4, 1, act, out);
    if (c < C) pixel_blocks(x, H, W, C, wdw, bdw, KH, KW, dh, dw, ih0, iw0, c, (C - c + 15) / 16, 0, act, out);
}
/* Two adjacent output rows oh, oh + 1 at once (stride 1 and dilation 1 both ways, kernel width KWC a constant
 * after inlining), SLIDE pixels each: the KH + 1 input rows [ih0, ih0 + KH] are loaded once per channel block and
 * feed both rows (input row r is kernel row r of the upper output row and kernel row r - 1 of the lower one). One
 * row at a time loads 3 input rows per output row for a 3x3 kernel, two at a time 2: per 8 pixels x 16 channels,
 * 30 -> 20 input vectors and 39 -> 29 loads for the 72 FMAs, and a third less traffic from L2 into L1. Input rows
 * outside [r_lo, r_hi) are zero padding (skipped); window columns outside [q_lo, q_hi) are zero; the first cnt
 * pixels of each row are stored at out0 and out1 (row stride cp). pf0, pf1: the two input rows the next pair adds
 * (prefetched) or NULL. 16 accumulators and SLIDE + KWC - 1 input vectors: kernel widths 3 and 5 (27 and 29 of
 * the 32 vector registers). */
static inline __attribute__((always_inline)) void depthwise_slide2(const float *x, int W, int C, const float *wdw,
                                                                   const float *bdw, int KH, int r_lo, int r_hi,
                                                                   int KWC, int ih0, int iw0, int q_lo, int q_hi,
                                                                   int cnt, int act, float *out0, float *out1,
                                                                   int cp, const float *pf0, const float *pf1) {
    for (int c = 0; c < C; c += 16) {
        int nc = C - c < 16 ? C - c : 16;
        __mmask16 k = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1);
        __m512 b = bdw ? _mm512_maskz_loadu_ps(k, bdw + c) : _mm512_setzero_ps();
        __m512 a0[SLIDE], a1[SLIDE];
        for (int j = 0; j < SLIDE; ++j) a0[j] = a1[j] = b;
        if (pf0) prefetch_window(pf0, iw0, C, c);
        if (pf1) prefetch_window(pf1, iw0, C, c);
        for (int r = r_lo; r < r_hi; ++r) {
            __m512 in[SLIDE + 4];
            window_row(x + (size_t)(ih0 + r) * W * C + c, iw0, C, KWC, q_lo, q_hi, nc, k, in);
            if (r < KH) window_fma(in, wdw + (size_t)r * KWC * C + c, C, KWC, k, a0);
            if (r >= 1) window_fma(in, wdw + (size_t)(r - 1) * KWC * C + c, C, KWC, k, a1);
        }
#pragma GCC unroll 8
        for (int j = 0; j < SLIDE; ++j)
            if (j < cnt) {
                _mm512_store_ps(out0 + (size_t)j * cp + c, act16(a0[j], act));
                _mm512_store_ps(out1 + (size_t)j * cp + c, act16(a1[j], act));
            }
    }
}

/* One block of depthwise3_rows: SLIDE output pixels of row oh (and of row oh + 1 where two) for one channel block,
 * from p (input row ih0, column iw0 of the block, channel c); w: the block's nine weight vectors, b its bias. Input
 * rows r outside [r_lo, r_hi) and window columns q outside [q_lo, q_hi) are zero padding (skipped); the first cnt
 * pixels of each row are stored from o0 and o1 (pixel stride cp). Each input vector feeds up to six FMAs (three
 * taps of each output row) as it is loaded: 16 accumulators, 9 weights and one input vector (27 of 32 registers).
 * Addresses are one pointer stepped by C (and by W C per row, cp per pixel), not one register per offset
 * (OPAQUE_POINTER). */
static inline __attribute__((always_inline)) void depthwise3_block(const float *p, size_t row, int C,
                                                                   const __m512 *w, __m512 b, int two, int r_lo,
                                                                   int r_hi, int q_lo, int q_hi, int cnt, int act,
                                                                   float *o0, float *o1, int cp) {
    __m512 a0[SLIDE], a1[SLIDE];
#pragma GCC unroll 8
    for (int j = 0; j < SLIDE; ++j) a0[j] = a1[j] = b;
    const float *pr = p;
#pragma GCC unroll 4
    for (int r = 0; r < 3 + two; ++r) { /* input row ih0 + r: kernel row r of row oh, r - 1 of row oh + 1 */
        if (r >= r_lo && r < r_hi) {
            const float *pq = pr;
#pragma GCC unroll 10
            for (int q = 0; q < SLIDE + 2; ++q) {
                if (q >= q_lo && q < q_hi) {
                    __m512 v = _mm512_loadu_ps(pq);
                    IN_REGISTER(v);
#pragma GCC unroll 3
                    for (int d = 0; d < 3; ++d) { /* tap column d of output pixel q - d */
                        int j = q - d;
                        if (j < 0 || j >= SLIDE) continue;
                        if (r < 3) a0[j] = _mm512_fmadd_ps(v, w[r * 3 + d], a0[j]);
                        if (two && r >= 1) a1[j] = _mm512_fmadd_ps(v, w[(r - 1) * 3 + d], a1[j]);
                    }
                }
                pq += C;
                OPAQUE_POINTER(pq);
            }
        }
        pr += row;
        OPAQUE_POINTER(pr);
    }
#pragma GCC unroll 8
    for (int j = 0; j < SLIDE; ++j) {
        if (j < cnt) {
            _mm512_store_ps(o0, act16(a0[j], act));
            if (two) _mm512_store_ps(o1, act16(a1[j], act));
        }
        o0 += cp;
        OPAQUE_POINTER(o0);
        if (two) {
            o1 += cp;
            OPAQUE_POINTER(o1);
        }
    }
}

/* Blocks k0 .. k1 - 1 of a depthwise3_rows segment, each for every channel block in turn: p, o0, o1 at the
 * segment's first pixel (channel 0). clean (a constant): every window inside the row and SLIDE pixels, so the
 * block has no column checks; otherwise each block's window columns and pixel count are taken at run time. The
 * block's nine weight vectors and bias are loaded for each channel block (from L1: 10 loads against the block's 40
 * input loads and 144 FMAs). */
static inline __attribute__((always_inline)) void depthwise3_blocks(const float *p, float *o0, float *o1,
                                                                    size_t row, int C, int W, const float *wdw,
                                                                    const float *bdw, int two, int r_lo, int r_hi,
                                                                    int iw0, int npix, int k0, int k1, int clean,
                                                                    int act, int cp) {
    for (int k = k0; k < k1; ++k) {
        const float *pk = p + (size_t)k * SLIDE * C;
        float *o0k = o0 + (size_t)k * SLIDE * cp, *o1k = two ? o1 + (size_t)k * SLIDE * cp : NULL;
        int iw = iw0 + k * SLIDE, cnt = npix - k * SLIDE < SLIDE ? npix - k * SLIDE : SLIDE;
        int q_lo = iw < 0 ? -iw : 0, q_hi = W - iw < SLIDE + 2 ? W - iw : SLIDE + 2;
        for (int c = 0; c < C; c += 16) {
            __m512 w[9];
#pragma GCC unroll 9
            for (int t = 0; t < 9; ++t) w[t] = _mm512_loadu_ps(wdw + (size_t)t * C + c);
            __m512 b = bdw ? _mm512_loadu_ps(bdw + c) : _mm512_setzero_ps();
            if (clean)
                depthwise3_block(pk + c, row, C, w, b, two, r_lo, r_hi, 0, SLIDE + 2, SLIDE, act, o0k + c,
                                 two ? o1k + c : NULL, cp);
            else
                depthwise3_block(pk + c, row, C, w, b, two, r_lo, r_hi, q_lo, q_hi, cnt, act, o0k + c,
                                 two ? o1k + c : NULL, cp);
        }
    }
}

/* Output pixels ow0 .. ow0 + npix - 1 of row oh, and of row oh + 1 where two, of a 3x3 kernel at stride 1, C a
 * multiple of 16; ih0 = oh - ph, iw0 = ow0 - pw; input rows r of ih0 .. ih0 + 2 + two outside [r_lo, r_hi) are
 * zero padding. Pixel j of each row into out0 / out1 + j cp. Blocks of SLIDE pixels slide along the segment
 * (depthwise3_block), each block taking every channel block in turn: the blocks whose windows lie inside the row
 * without column checks, those at the row's borders or the segment's end with them (separate loops: as branches of
 * one loop, GCC merged the two into one block with the checks). Blocks outer, so a block's window is read as
 * contiguous runs of (SLIDE + 2) C floats, which the hardware prefetchers follow; channel blocks outer (each
 * channel block's weights in registers along the whole segment) read the window one 64-byte line per pixel at a
 * stride of C floats, which an Intel core fetched from L2 at about a third of the rate of contiguous lines, and
 * the step ran 1.2-1.6x slower there (docs/design-notes.md). */
static inline __attribute__((always_inline)) void depthwise3_rows(const float *x, int W, int C, const float *wdw,
                                                                  const float *bdw, int two, int r_lo, int r_hi,
                                                                  int ih0, int iw0, int npix, int act, float *out0,
                                                                  float *out1, int cp) {
    const size_t row = (size_t)W * C;
    int ka, kb, nb;
    window_blocks(iw0, npix, W, SLIDE, &ka, &kb, &nb);
    const float *p = x + ((ptrdiff_t)ih0 * W + iw0) * C;
    depthwise3_blocks(p, out0, out1, row, C, W, wdw, bdw, two, r_lo, r_hi, iw0, npix, 0, ka, 0, act, cp);
    depthwise3_blocks(p, out0, out1, row, C, W, wdw, bdw, two, r_lo, r_hi, iw0, npix, ka, kb, 1, act, cp);
    depthwise3_blocks(p, out0, out1, row, C, W, wdw, bdw, two, r_lo, r_hi, iw0, npix, kb, nb, 0, act, cp);
}

/* depthwise3_rows as functions of their own (register allocation of their own): a row pair or one row (a tile's
 * partial rows, a pair's odd row), with all input rows inside the image (constant bounds: no row checks) or at the
 * image's top or bottom */
__attribute__((noinline)) static void depthwise3_pair(const float *x, int W, int C, const float *wdw,
                                                      const float *bdw, int ih0, int iw0, int npix, int act,
                                                      float *out0, float *out1, int cp) {
    depthwise3_rows(x, W, C, wdw, bdw, 1, 0, 4, ih0, iw0, npix, act, out0, out1, cp);
}
__attribute__((noinline)) static void depthwise3_pair_border(const float *x, int W, int C, const float *wdw,
                                                             const float *bdw, int r_lo, int r_hi, int ih0, int iw0,
                                                             int npix, int act, float *out0, float *out1, int cp) {
    depthwise3_rows(x, W, C, wdw, bdw, 1, r_lo, r_hi, ih0, iw0, npix, act, out0, out1, cp);
}
__attribute__((noinline)) static void depthwise3_row(const float *x, int W, int C, const float *wdw,
                                                     const float *bdw, int ih0, int iw0, int npix, int act,
                                                     float *out, int cp) {
    depthwise3_rows(x, W, C, wdw, bdw, 0, 0, 3, ih0, iw0, npix, act, out, NULL, cp);
}
__attribute__((noinline)) static void depthwise3_row_border(const float *x, int W, int C, const float *wdw,
                                                            const float *bdw, int r_lo, int r_hi, int ih0, int iw0,
                                                            int npix, int act, float *out, int cp) {
    depthwise3_rows(x, W, C, wdw, bdw, 0, r_lo, r_hi, ih0, iw0, npix, act, out, NULL, cp);
}

/* Whether a layer takes the stride-2 eight-pixel blocks (depthwise3s2_rows_block): a 3x3 kernel at stride 2,
 * dilation 1, whole channel vectors. */
static inline int s2k3_applies(int C, int KH, int KW, int sh, int sw, int dh, int dw) {
    return KH == 3 && KW == 3 && sh == 2 && sw == 2 && dh == 1 && dw == 1 && C % 16 == 0;
}

/* Whether a layer takes depthwise_row_pair: stride 1 and dilation 1 both ways, kernel width 3 or 5. */
static inline int pairs_apply(int KW, int sh, int sw, int dh, int dw) {
    return sh == 1 && sw == 1 && dh == 1 && dw == 1 && (KW == 3 || KW == 5);
}

/* Output rows oh and oh + 1 (whole rows, oh + 1 < Ho) into t0 and t1 (row stride cp), for a layer that
 * pairs_apply. A 3x3 kernel on whole channel vectors: the two rows in one depthwise3_rows segment. Otherwise blocks
 * of SLIDE pixels through depthwise_slide2 (interior ones with constant bounds, so their loops have no checks); a
 * last block shorter than EDGE_MIN pixels one pixel at a time. */
static void depthwise_row_pair(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                               int KW, int ph, int pw, int act, int Wo, int oh, float *t0, float *t1, int cp) {
    int ih0 = oh - ph;
    int r_lo = ih0 < 0 ? -ih0 : 0, r_hi = H - ih0 < KH + 1 ? H - ih0 : KH + 1;
    int ihn = ih0 + KH + 1; /* the input rows the next pair adds */
    const float *pf0 = ihn < H ? x + (size_t)ihn * W * C : NULL, *pf1 = ihn + 1 < H ? x + (size_t)(ihn + 1) * W * C : NULL;
    if (KH == 3 && KW == 3 && C % 16 == 0) {
        if (r_lo == 0 && r_hi == 4) depthwise3_pair(x, W, C, wdw, bdw, ih0, -pw, Wo, act, t0, t1, cp);
        else depthwise3_pair_border(x, W, C, wdw, bdw, r_lo, r_hi, ih0, -pw, Wo, act, t0, t1, cp);
        return;
    }
    for (int ow = 0; ow < Wo; ow += SLIDE) {
        int cnt = Wo - ow < SLIDE ? Wo - ow : SLIDE, iw0 = ow - pw;
        float *o0 = t0 + (size_t)ow * cp, *o1 = t1 + (size_t)ow * cp;
        if (cnt == SLIDE && iw0 >= 0 && iw0 + SLIDE + KW - 1 <= W) {
            if (KW == 3) depthwise_slide2(x, W, C, wdw, bdw, KH, r_lo, r_hi, 3, ih0, iw0, 0, SLIDE + 2, SLIDE, act, o0, o1, cp, pf0, pf1);
            else depthwise_slide2(x, W, C, wdw, bdw, KH, r_lo, r_hi, 5, ih0, iw0, 0, SLIDE + 4, SLIDE, act, o0, o1, cp, pf0, pf1);
        } else if (cnt >= EDGE_MIN) {
            int q_lo = iw0 < 0 ? -iw0 : 0, q_hi = W - iw0 < SLIDE + KW - 1 ? W - iw0 : SLIDE + KW - 1;
            if (KW == 3) depthwise_slide2(x, W, C, wdw, bdw, KH, r_lo, r_hi, 3, ih0, iw0, q_lo, q_hi, cnt, act, o0, o1, cp, NULL, NULL);
            else depthwise_slide2(x, W, C, wdw, bdw, KH, r_lo, r_hi, 5, ih0, iw0, q_lo, q_hi, cnt, act, o0, o1, cp, NULL, NULL);
        } else {
            for (int j = 0; j < cnt; ++j) {
                depthwise_pixel(x, H, W, C, wdw, bdw, KH, KW, 1, 1, ih0, iw0 + j, act, o0 + (size_t)j * cp);
                depthwise_pixel(x, H, W, C, wdw, bdw, KH, KW, 1, 1, ih0 + 1, iw0 + j, act, o1 + (size_t)j * cp);
            }
        }
    }
}

/* Eight output pixels of one row (two: of rows oh and oh + 1) of a 3x3 kernel at stride 2 and dilation 1, for every
 * channel vector (C a multiple of 16): input rows ih0 + r for r in [r_lo, r_hi) (the others are zero padding,
 * skipped) of ih0 .. ih0 + 2 (two: ih0 .. ih0 + 4, row oh + 1 reading ih0 + 2 .. ih0 + 4), columns iw0 .. iw0 + 16,
 * all inside the image; pixel j into o0 + j cp (and o1 + j cp). Pixel j reads window columns 2j .. 2j + 2, so column
 * 2j + 2 is tap 2 of pixel j and tap 0 of pixel j + 1: each input row's 17 columns are loaded once, 17 loads for 24
 * FMAs of each output row (the four-pixel blocks: 12 for 12), and a pair shares input row ih0 + 2: 85 loads for 144
 * FMAs where two single rows take 102. Pixels outer, channel vectors inner, as in depthwise_run; the nine weight
 * vectors stay in registers for the block, and the output rows' eight pixels are independent chains of FMAs: 16
 * accumulators, 9 weights and three input vectors, 28 of the 32 registers. Addresses are one pointer stepped by C
 * (OPAQUE_POINTER): with an offset per column, GCC kept the 17 offsets on the stack and the blocks lost to the
 * four-pixel ones (docs/design-notes.md). */
static inline __attribute__((always_inline)) void depthwise3s2_rows_block(const float *x, int W, int C,
                                                                          const float *wdw, const float *bdw, int two,
                                                                          int r_lo, int r_hi, int ih0, int iw0,
                                                                          int act, float *o0, float *o1, int cp) {
    const size_t row = (size_t)W * C;
    for (int c = 0; c < C; c += 16) {
        __m512 w[9], a0[8], a1[8];
#pragma GCC unroll 9
        for (int k = 0; k < 9; ++k) w[k] = _mm512_loadu_ps(wdw + (size_t)k * C + c);
        __m512 b = bdw ? _mm512_loadu_ps(bdw + c) : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) a0[j] = a1[j] = b;
        const float *p = x + ((ptrdiff_t)ih0 * W + iw0) * C + c;
#pragma GCC unroll 5
        for (int r = 0; r < 3 + 2 * two; ++r) {
            if (r >= r_lo && r < r_hi) {
                const float *pq = p;
                __m512 in0 = _mm512_loadu_ps(pq);
#pragma GCC unroll 8
                for (int j = 0; j < 8; ++j) {
                    pq += C;
                    OPAQUE_POINTER(pq);
                    __m512 in1 = _mm512_loadu_ps(pq);
                    pq += C;
                    OPAQUE_POINTER(pq);
                    __m512 in2 = _mm512_loadu_ps(pq);
                    if (r < 3) {
                        a0[j] = _mm512_fmadd_ps(in0, w[3 * r], a0[j]);
                        a0[j] = _mm512_fmadd_ps(in1, w[3 * r + 1], a0[j]);
                        a0[j] = _mm512_fmadd_ps(in2, w[3 * r + 2], a0[j]);
                    }
                    if (two && r >= 2) {
                        a1[j] = _mm512_fmadd_ps(in0, w[3 * (r - 2)], a1[j]);
                        a1[j] = _mm512_fmadd_ps(in1, w[3 * (r - 2) + 1], a1[j]);
                        a1[j] = _mm512_fmadd_ps(in2, w[3 * (r - 2) + 2], a1[j]);
                    }
                    in0 = in2;
                }
            }
            p += row;
            OPAQUE_POINTER(p);
        }
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
            _mm512_store_ps(o0 + (size_t)j * cp + c, act16(a0[j], act));
            if (two) _mm512_store_ps(o1 + (size_t)j * cp + c, act16(a1[j], act));
        }
    }
}

/* depthwise3s2_rows_block as functions of their own (register allocation of their own): two rows with all five
 * input rows inside the image, or one row with its input rows [r_lo, r_hi) of three inside */
__attribute__((noinline)) static void depthwise3s2_pair_block(const float *x, int W, int C, const float *wdw,
                                                              const float *bdw, int ih0, int iw0, int act,
                                                              float *o0, float *o1, int cp) {
    depthwise3s2_rows_block(x, W, C, wdw, bdw, 1, 0, 5, ih0, iw0, act, o0, o1, cp);
}
__attribute__((noinline)) static void depthwise3s2_row_block(const float *x, int W, int C, const float *wdw,
                                                             const float *bdw, int r_lo, int r_hi, int ih0, int iw0,
                                                             int act, float *o0, int cp) {
    depthwise3s2_rows_block(x, W, C, wdw, bdw, 0, r_lo, r_hi, ih0, iw0, act, o0, NULL, cp);
}

static void depthwise_run(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH, int KW,
                          int sh, int sw, int ph, int pw, int dh, int dw, int act, int Wo, int p0, int m, float *t,
                          int cp);

/* Whole output row oh (two: rows oh and oh + 1, whose five input rows lie inside the image) of a 3x3 kernel at
 * stride 2 and dilation 1, C a multiple of 16, into t0 (and t1), pixel stride cp: blocks of eight pixels
 * (depthwise3s2_rows_block) from the first pixel whose window starts inside the row. Where S2_OVERLAP_MIN or
 * more pixels whose windows end inside the row are left after the last whole block, one more block ends at the
 * last of them and so overlaps the one before it (those pixels are computed twice, the same way, rather than four
 * and one at a time); fewer are not worth a block. The pixels left at either end (a window in the zero padding;
 * rows too short for a block) through depthwise_run. */
#define S2_OVERLAP_MIN 4
static void depthwise3s2_rows(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int ph,
                              int pw, int act, int Wo, int oh, int two, float *t0, float *t1, int cp) {
    int ih0 = 2 * oh - ph;
    int r_lo = ih0 < 0 ? -ih0 : 0, r_hi = H - ih0 < 3 ? H - ih0 : 3;
    int first = (pw + 1) / 2;                             /* 2 ow - pw >= 0 */
    int last = W - 17 + pw >= 0 ? (W - 17 + pw) / 2 : -1; /* the last block start with 2 ow - pw + 16 < W */
    last = last < Wo - 8 ? last : Wo - 8;
    int span = last >= first ? last + 8 - first : 0; /* pixels [first, first + span) can take blocks */
    int whole = span / 8, overlap = whole > 0 && span % 8 >= S2_OVERLAP_MIN;
    int lo = whole ? first : 0, hi = whole ? first + 8 * whole + (overlap ? span % 8 : 0) : 0; /* the blocks' */
    for (int k = 0; k < whole + overlap; ++k) {
        int ow = k < whole ? first + 8 * k : last, iw0 = 2 * ow - pw;
        if (two)
            depthwise3s2_pair_block(x, W, C, wdw, bdw, ih0, iw0, act, t0 + (size_t)ow * cp, t1 + (size_t)ow * cp, cp);
        else
            depthwise3s2_row_block(x, W, C, wdw, bdw, r_lo, r_hi, ih0, iw0, act, t0 + (size_t)ow * cp, cp);
    }
    for (int r = 0; r <= two; ++r) {
        float *out = r ? t1 : t0;
        if (lo > 0) depthwise_run(x, H, W, C, wdw, bdw, 3, 3, 2, 2, ph, pw, 1, 1, act, Wo, (oh + r) * Wo, lo, out, cp);
        if (hi < Wo)
            depthwise_run(x, H, W, C, wdw, bdw, 3, 3, 2, 2, ph, pw, 1, 1, act, Wo, (oh + r) * Wo + hi, Wo - hi,
                          out + (size_t)hi * cp, cp);
    }
}

/* Depthwise output for pixels [p0, p0 + m) of one image (any span of its output pixels) into t[m][cp]: the
 * channel-vector path (more than FLAT_MAX_C channels, or a stride other than 1). */
static void depthwise_run(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH, int KW,
                          int sh, int sw, int ph, int pw, int dh, int dw, int act, int Wo, int p0, int m, float *t,
                          int cp) {
    /* Pixels outer, blocks of 16 channels inner, so each pixel's input is read as contiguous runs of C floats
     * (the other order, channel block outer, read the input in 64-byte pieces at a stride of C floats and ran
     * several times slower once the input no longer fitted in the cache). Stride 1, dilation 1 and a 3/5/7-wide kernel
     * (the common case): eight adjacent pixels of a row share each kernel row's input vectors (depthwise_slide),
     * interior blocks without checks, blocks at the border (and shorter ones at a row's or tile's end) with the
     * padding's rows and columns skipped. Before border blocks took the window too, border pixels went one at a
     * time at several times the cost of interior ones, which slowed small images (a third of a 16x16 image's
     * pixels are border pixels). A 3x3 kernel at stride 2 on whole channel vectors: eight interior pixels of a row
     * at once where they fit (depthwise3s2_row_block). Other strides and dilations, and the rest: four adjacent
     * interior pixels of a row are computed together: each weight vector is loaded once for the four, and the
     * four accumulators are independent chains of FMAs (one pixel at a time waited on the FMA latency); border
     * pixels one at a time, four channel blocks at once. */
    int oh = p0 / Wo, ow = p0 % Wo;
    int i = 0;
    /* a 3x3 kernel, stride 1, dilation 1, whole channel vectors: each row's segment in one depthwise3_rows */
    if (KH == 3 && KW == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1 && C % 16 == 0) {
        while (i < m) {
            int ih0 = oh - ph, cnt = m - i < Wo - ow ? m - i : Wo - ow;
            int r_lo = ih0 < 0 ? -ih0 : 0, r_hi = H - ih0 < 3 ? H - ih0 : 3;
            float *out = t + (size_t)i * cp;
            if (r_lo == 0 && r_hi == 3) {
                depthwise3_row(x, W, C, wdw, bdw, ih0, ow - pw, cnt, act, out, cp);
            } else {
                depthwise3_row_border(x, W, C, wdw, bdw, r_lo, r_hi, ih0, ow - pw, cnt, act, out, cp);
            }
            i += cnt;
            ow += cnt;
            if (ow == Wo) { ow = 0; ++oh; }
        }
        return;
    }
    int s2k3 = s2k3_applies(C, KH, KW, sh, sw, dh, dw);
    while (i < m) {
        int ih0 = oh * sh - ph, iw0 = ow * sw - pw;
        int rows_in = ih0 >= 0 && ih0 + (KH - 1) * dh < H;
        if (s2k3 && rows_in && i + 8 <= m && ow + 8 <= Wo && iw0 >= 0 && iw0 + 16 < W) {
            depthwise3s2_row_block(x, W, C, wdw, bdw, 0, 3, ih0, iw0, act, t + (size_t)i * cp, cp);
            i += 8;
            ow += 8;
            if (ow == Wo) { ow = 0; ++oh; }
            continue;
        }
        if (sw == 1 && dw == 1 && (KW == 3 || KW == 5 || KW == 7) && rows_in && i + SLIDE <= m
            && ow + SLIDE <= Wo && iw0 >= 0 && iw0 + SLIDE - 1 + KW - 1 < W) {
            float *out = t + (size_t)i * cp;
            int ihn = ih0 + sh + (KH - 1) * dh; /* the last input row of the next output row */
            const float *pf = ihn < H ? x + (size_t)ihn * W * C : NULL;
            if (KW == 3) depthwise_slide(x, W, C, wdw, bdw, 0, KH, 3, ih0, iw0, dh, 0, SLIDE + 2, SLIDE, act, out, cp, pf);
            else if (KW == 5) depthwise_slide(x, W, C, wdw, bdw, 0, KH, 5, ih0, iw0, dh, 0, SLIDE + 4, SLIDE, act, out, cp, pf);
            else depthwise_slide(x, W, C, wdw, bdw, 0, KH, 7, ih0, iw0, dh, 0, SLIDE + 6, SLIDE, act, out, cp, pf);
            i += SLIDE;
            ow += SLIDE;
            if (ow == Wo) { ow = 0; ++oh; }
            continue;
        }
        int cnt = m - i < Wo - ow ? m - i : Wo - ow;
        cnt = cnt < SLIDE ? cnt : SLIDE;
        if (sw == 1 && dw == 1 && (KW == 3 || KW == 5 || KW == 7) && cnt >= EDGE_MIN) {
            /* a block at the image's border (or a tile's or row's end): the same window, with the kernel rows and
             * columns that fall in the zero padding skipped or zero */
            int kh_lo = 0, kh_hi = KH;
            while (kh_lo < KH && ih0 + kh_lo * dh < 0) ++kh_lo;
            while (kh_hi > kh_lo && ih0 + (kh_hi - 1) * dh >= H) --kh_hi;
            int q_lo = iw0 < 0 ? -iw0 : 0, q_hi = W - iw0 < SLIDE + KW - 1 ? W - iw0 : SLIDE + KW - 1;
            depthwise_slide_any(x, W, C, wdw, bdw, kh_lo, kh_hi, KW, ih0, iw0, dh, q_lo, q_hi, cnt, act,
                                t + (size_t)i * cp, cp, NULL);
            i += cnt;
            ow += cnt;
            if (ow == Wo) { ow = 0; ++oh; }
            continue;
        }
        if (rows_in && i + 4 <= m && ow + 4 <= Wo && iw0 >= 0 && iw0 + 3 * sw + (KW - 1) * dw < W) {
            float *out = t + (size_t)i * cp;
            for (int c = 0; c < C; c += 16) {
                int nc = C - c < 16 ? C - c : 16;
                __mmask16 k = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1);
                __m512 b = bdw ? _mm512_maskz_loadu_ps(k, bdw + c) : _mm512_setzero_ps();
                __m512 a0 = b, a1 = b, a2 = b, a3 = b;
                size_t step = (size_t)sw * C;
                for (int kh = 0; kh < KH; ++kh) {
                    const float *row = x + ((size_t)(ih0 + kh * dh) * W + iw0) * C + c;
                    const float *wrow = wdw + (size_t)kh * KW * C + c;
                    if (nc == 16) { /* plain loads: masked ones cost more on AMD Zen even with a full mask */
                        for (int kw = 0; kw < KW; ++kw) {
                            const float *xp = row + (size_t)kw * dw * C;
                            __m512 wv = _mm512_loadu_ps(wrow + (size_t)kw * C);
                            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp), wv, a0);
                            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + step), wv, a1);
                            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + 2 * step), wv, a2);
                            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(xp + 3 * step), wv, a3);
                        }
                        continue;
                    }
                    for (int kw = 0; kw < KW; ++kw) {
                        const float *xp = row + (size_t)kw * dw * C;
                        __m512 wv = _mm512_maskz_loadu_ps(k, wrow + (size_t)kw * C);
                        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, xp), wv, a0);
                        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, xp + step), wv, a1);
                        a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, xp + 2 * step), wv, a2);
                        a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, xp + 3 * step), wv, a3);
                    }
                }
                if (act != ACT_NONE) {
                    __m512 z = _mm512_setzero_ps(), six = _mm512_set1_ps(6.f);
                    a0 = _mm512_max_ps(a0, z); a1 = _mm512_max_ps(a1, z);
                    a2 = _mm512_max_ps(a2, z); a3 = _mm512_max_ps(a3, z);
                    if (act == ACT_RELU6) {
                        a0 = _mm512_min_ps(a0, six); a1 = _mm512_min_ps(a1, six);
                        a2 = _mm512_min_ps(a2, six); a3 = _mm512_min_ps(a3, six);
                    }
                }
                _mm512_store_ps(out + c, a0);
                _mm512_store_ps(out + cp + c, a1);
                _mm512_store_ps(out + 2 * (size_t)cp + c, a2);
                _mm512_store_ps(out + 3 * (size_t)cp + c, a3);
            }
            i += 4;
            ow += 4;
            if (ow == Wo) { ow = 0; ++oh; }
            continue;
        }
        /* one pixel, any position (border pixels skip the taps that fall in the zero padding), four channel blocks
         * at once: four independent chains of FMAs (one chain waits on the FMA latency, which made these pixels ~4x
         * slower than interior ones; they are 18 % of a 32x32 image's) */
        depthwise_pixel(x, H, W, C, wdw, bdw, KH, KW, dh, dw, ih0, iw0, act, t + (size_t)i * cp);
        ++i;
        if (++ow == Wo) { ow = 0; ++oh; }
    }
}
#endif

#ifdef SEPCONV_VEC
/* The portable-SIMD paths (AVX2 + FMA, NEON; simd.h): the AVX-512 paths' structure with VW-float vectors. A
 * sliding window of SLIDE_V(K) pixels for a K-wide kernel keeps its accumulators, the window's input vectors and a
 * weight vector in registers: with AVX2's 16 registers 6 pixels for a 3-wide kernel (6 + 8 + 1) and 4 for wider
 * ones (4 + 10 + 1 at width 7), 8 with NEON's 32. A wider window loads each input vector for more pixels. With 16
 * registers a 3-wide kernel at stride 1 or 2 takes vdw_win3 instead (eight chains of FMAs, below). */
#if VREGS >= 32
#define SLIDE_V(K) 8
#else
#define SLIDE_V(K) ((K) == 3 ? 6 : 4)
#endif
#define SLIDE_V_MAX 8
#define MR_V 6           /* pixels per pointwise register block */
/* 1: a register block requests its output lines for writing before its FMAs (plain stores only), so the reads
 * that plain stores need overlap the block's arithmetic. It pays where the 1x1 step's output goes past the L2
 * cache and costs a little where it stays in L1/L2 (record: benchmarks/results/gemm-write-prefetch-zen4-avx512/,
 * from benchmarks/bench_gemm_harness.py, which builds both); the AVX-512 block, twice as wide, did not gain. */
#ifndef WRITE_PREFETCH
#define WRITE_PREFETCH 1
#endif
#define NSUB (16 / VW)   /* vectors per 16-column sub-block of a 32-column weight panel */

/* S = SLIDE_V(KWC) adjacent output pixels of one row, stride 1 and dilation 1, kernel width KWC (a constant after
 * inlining): each kernel row's S + KWC - 1 input vectors are loaded once and shared by the pixels' taps.
 * Kernel rows [kh_lo, kh_hi) and window columns [q_lo, q_hi) are inside the input (the rest is zero padding); the
 * first cnt outputs are stored (tile row stride cp >= C rounded up to 16, so a whole vector fits). */
SEPCONV_INLINE void vdw_slide(const float *x, int W, int C, const float *wdw, const float *bdw, int kh_lo,
                              int kh_hi, int KWC, int ih0, int iw0, int dh, int q_lo, int q_hi, int cnt, int act,
                              float *out, int cp) {
    const int S = SLIDE_V(KWC);
    for (int c = 0; c < C; c += VW) {
        int nc = C - c < VW ? C - c : VW;
        vf b = bdw ? vload_n(bdw + c, nc) : vzero();
        vf acc[SLIDE_V_MAX];
#pragma GCC unroll 8
        for (int j = 0; j < S; ++j) acc[j] = b;
        for (int kh = kh_lo; kh < kh_hi; ++kh) {
            const float *row = x + (size_t)(ih0 + kh * dh) * W * C + c;
            const float *wrow = wdw + (size_t)kh * KWC * C + c;
            vf in[SLIDE_V_MAX + 6];
            if (nc == VW) {
#pragma GCC unroll 16
                for (int q = 0; q < S + KWC - 1; ++q)
                    in[q] = q >= q_lo && q < q_hi ? vload(row + (ptrdiff_t)(iw0 + q) * C) : vzero();
            } else {
#pragma GCC unroll 16
                for (int q = 0; q < S + KWC - 1; ++q)
                    in[q] = q >= q_lo && q < q_hi ? vload_n(row + (ptrdiff_t)(iw0 + q) * C, nc) : vzero();
            }
#pragma GCC unroll 8
            for (int kw = 0; kw < KWC; ++kw) {
                vf wv = vload_n(wrow + (size_t)kw * C, nc);
#pragma GCC unroll 8
                for (int j = 0; j < S; ++j) acc[j] = vfma(in[j + kw], wv, acc[j]);
            }
        }
#pragma GCC unroll 8
        for (int j = 0; j < S; ++j)
            if (j < cnt) vstore(out + (size_t)j * cp + c, vact(acc[j], act));
    }
}

/* S adjacent output pixels of one row for a 3-wide kernel at stride SWC (1 or 2) and dilation 1 across, NV
 * channel vectors at a time (S, SWC, NV constants after inlining): S = 4 with NV = 2 (NV = 1 for a last, partial
 * block of channels), or S = 8 with NV = 1. Per kernel row the three weight vectors of each channel vector are
 * loaded first and stay in registers, then each of the row's (S - 1) SWC + 3 input vectors per channel vector is
 * loaded once and multiplied into the pixels whose taps it is. Eight accumulators either way (eight independent
 * chains of FMAs, as in the AVX-512 window), three or six weights and one input: at most 15 of AVX2's 16
 * registers. vdw_slide's six-pixel window has six chains and vdw_quad four, each pixel's nine FMAs in a row, and
 * they waited on them (docs/design-notes.md). Kernel rows [kh_lo, kh_hi) and window columns [q_lo, q_hi) are
 * inside the input (the rest is zero padding); the first cnt outputs are stored (tile row stride cp). */
SEPCONV_INLINE void vdw_win3_nv(const float *x, int W, int C, const float *wdw, const float *bdw, int kh_lo,
                                 int kh_hi, int SWC, int S, int ih0, int iw0, int dh, int q_lo, int q_hi, int cnt,
                                 int act, float *out, int cp, int c, int nc, int NV) {
    vf acc[2][8];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
        vf b = bdw ? (NV == 2 ? vload(bdw + c + v * VW) : vload_n(bdw + c, nc)) : vzero();
#pragma GCC unroll 8
        for (int j = 0; j < S; ++j) acc[v][j] = b;
    }
    for (int kh = kh_lo; kh < kh_hi; ++kh) {
        const float *row = x + (size_t)(ih0 + kh * dh) * W * C + c;
        const float *wrow = wdw + (size_t)kh * 3 * C + c;
        vf wv[2][3];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
#pragma GCC unroll 3
            for (int kw = 0; kw < 3; ++kw)
                wv[v][kw] = NV == 2 ? vload(wrow + (size_t)kw * C + v * VW) : vload_n(wrow + (size_t)kw * C, nc);
        const float *pq = row + (ptrdiff_t)iw0 * C;
#pragma GCC unroll 17
        for (int q = 0; q < (S - 1) * SWC + 3; ++q, pq += C) {
            OPAQUE_POINTER(pq);
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) {
                vf in = q < q_lo || q >= q_hi ? vzero()
                        : NV == 2 ? vload(pq + v * VW)
                                  : vload_n(pq, nc);
#pragma GCC unroll 3
                for (int kw = 2; kw >= 0; --kw)
                    if (q - kw >= 0 && (q - kw) % SWC == 0 && (q - kw) / SWC < S)
                        acc[v][(q - kw) / SWC] = vfma(in, wv[v][kw], acc[v][(q - kw) / SWC]);
            }
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
#pragma GCC unroll 8
        for (int j = 0; j < S; ++j)
            if (j < cnt) vstore(out + (size_t)j * cp + c + v * VW, vact(acc[v][j], act));
}

/* vdw_win3_nv over all channels: with S = 4 pairs of channel vectors, then what is left one vector at a time. */
SEPCONV_INLINE void vdw_win3(const float *x, int W, int C, const float *wdw, const float *bdw, int kh_lo, int kh_hi,
                              int SWC, int S, int ih0, int iw0, int dh, int q_lo, int q_hi, int cnt, int act,
                              float *out, int cp) {
    int c = 0;
    if (S == 4)
        for (; c + 2 * VW <= C; c += 2 * VW)
            vdw_win3_nv(x, W, C, wdw, bdw, kh_lo, kh_hi, SWC, 4, ih0, iw0, dh, q_lo, q_hi, cnt, act, out, cp, c,
                         2 * VW, 2);
    for (; c < C; c += VW)
        vdw_win3_nv(x, W, C, wdw, bdw, kh_lo, kh_hi, SWC, S, ih0, iw0, dh, q_lo, q_hi, cnt, act, out, cp, c,
                     C - c < VW ? C - c : VW, 1);
}

/* vdw_win3 for the block of cnt <= S pixels whose first window starts at input row ih0 and column iw0: the
 * kernel rows and window columns in the zero padding found, and the interior call made with constant bounds. */
SEPCONV_INLINE void vdw_win3_block_s(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                                      int sw, int S, int ih0, int iw0, int dh, int cnt, int act, float *out, int cp) {
    int kh_lo = 0, kh_hi = KH, span = (S - 1) * sw + 3;
    while (kh_lo < KH && ih0 + kh_lo * dh < 0) ++kh_lo;
    while (kh_hi > kh_lo && ih0 + (kh_hi - 1) * dh >= H) --kh_hi;
    int q_lo = iw0 < 0 ? -iw0 : 0, q_hi = W - iw0 < span ? W - iw0 : span;
    int interior = kh_lo == 0 && kh_hi == KH && q_lo == 0 && q_hi == span && cnt == S;
#define VDW_WIN3(swc, s) \
    (interior ? vdw_win3(x, W, C, wdw, bdw, 0, KH, swc, s, ih0, iw0, dh, 0, (s - 1) * swc + 3, s, act, out, cp) \
              : vdw_win3(x, W, C, wdw, bdw, kh_lo, kh_hi, swc, s, ih0, iw0, dh, q_lo, q_hi, cnt, act, out, cp))
    if (sw == 1) VDW_WIN3(1, S);
    else VDW_WIN3(2, S);
#undef VDW_WIN3
}

/* vdw_win3_block_s for each window width, in functions of their own */
static void vdw_win3_block4(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH, int sw,
                             int ih0, int iw0, int dh, int cnt, int act, float *out, int cp) {
    vdw_win3_block_s(x, H, W, C, wdw, bdw, KH, sw, 4, ih0, iw0, dh, cnt, act, out, cp);
}
static void vdw_win3_block8(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH, int sw,
                             int ih0, int iw0, int dh, int cnt, int act, float *out, int cp) {
    vdw_win3_block_s(x, H, W, C, wdw, bdw, KH, sw, 8, ih0, iw0, dh, cnt, act, out, cp);
}

/* One output pixel, all channels, any position, stride and dilation (taps in the zero padding skipped), up to four
 * channel vectors at once (independent chains of FMAs). */
static void vdw_pixel(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH, int KW,
                      int dh, int dw, int ih0, int iw0, int act, float *out) {
    for (int c = 0; c < C; c += 4 * VW) {
        int nb = (C - c + VW - 1) / VW;
        nb = nb < 4 ? nb : 4;
        vf acc[4];
        for (int q = 0; q < nb; ++q) acc[q] = bdw ? vload_n(bdw + c + q * VW, C - c - q * VW) : vzero();
        for (int kh = 0; kh < KH; ++kh) {
            int ih = ih0 + kh * dh;
            if (ih < 0 || ih >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                int iw = iw0 + kw * dw;
                if (iw < 0 || iw >= W) continue;
                const float *xp = x + ((size_t)ih * W + iw) * C + c, *wp = wdw + ((size_t)kh * KW + kw) * C + c;
                for (int q = 0; q < nb; ++q) {
                    int n = C - c - q * VW;
                    acc[q] = vfma(vload_n(xp + q * VW, n), vload_n(wp + q * VW, n), acc[q]);
                }
            }
        }
        for (int q = 0; q < nb; ++q) vstore(out + c + q * VW, vact(acc[q], act));
    }
}

/* Four adjacent interior output pixels of a row at any stride and dilation (all taps inside the input): each
 * weight vector is loaded once for the four pixels, whose accumulators are independent chains of FMAs (one pixel
 * at a time loads a weight vector per FMA). */
static void vdw_quad(const float *x, int W, int C, const float *wdw, const float *bdw, int KH, int KW, int sw,
                     int dh, int dw, int ih0, int iw0, int act, float *out, int cp) {
    size_t step = (size_t)sw * C;
    for (int c = 0; c < C; c += VW) {
        int nc = C - c < VW ? C - c : VW;
        vf b = bdw ? vload_n(bdw + c, nc) : vzero();
        vf a0 = b, a1 = b, a2 = b, a3 = b;
        for (int kh = 0; kh < KH; ++kh) {
            const float *row = x + ((size_t)(ih0 + kh * dh) * W + iw0) * C + c;
            const float *wrow = wdw + (size_t)kh * KW * C + c;
            if (nc == VW) {
                for (int kw = 0; kw < KW; ++kw) {
                    const float *xp = row + (size_t)kw * dw * C;
                    vf wv = vload(wrow + (size_t)kw * C);
                    a0 = vfma(vload(xp), wv, a0);
                    a1 = vfma(vload(xp + step), wv, a1);
                    a2 = vfma(vload(xp + 2 * step), wv, a2);
                    a3 = vfma(vload(xp + 3 * step), wv, a3);
                }
                continue;
            }
            for (int kw = 0; kw < KW; ++kw) {
                const float *xp = row + (size_t)kw * dw * C;
                vf wv = vload_n(wrow + (size_t)kw * C, nc);
                a0 = vfma(vload_n(xp, nc), wv, a0);
                a1 = vfma(vload_n(xp + step, nc), wv, a1);
                a2 = vfma(vload_n(xp + 2 * step, nc), wv, a2);
                a3 = vfma(vload_n(xp + 3 * step, nc), wv, a3);
            }
        }
        vstore(out + c, vact(a0, act));
        vstore(out + cp + c, vact(a1, act));
        vstore(out + 2 * (size_t)cp + c, vact(a2, act));
        vstore(out + 3 * (size_t)cp + c, vact(a3, act));
    }
}

#define VDW_SLIDE_K(K, kl, kh, qlo, qhi, n) \
    vdw_slide(x, W, C, wdw, bdw, kl, kh, K, ih0, iw0, dh, qlo, qhi, n, act, t + (size_t)i * cp, cp)

/* One output row of a 3x3 kernel at stride 1, C a multiple of VW: nblk consecutive blocks of VDW3 pixels from input
 * column iw0, pixel j into out + j cp; kernel rows outside [r_lo, r_hi) and window columns outside [q_lo, q_hi) fall
 * outside the image (skipped), the first cnt pixels of each block stored. Each block runs through
 * every channel vector in turn (a vector is half a 64-byte line with AVX2, a quarter with NEON: a line is fetched
 * once and used whole, where a channel vector's sweep along the row fetched it again for the next), each kernel
 * row's three weight vectors loaded once per block and channel vector, each input vector loaded once and fed to its
 * (up to) three FMAs as it arrives: VDW3 accumulators, 3 weights and one input (12 of AVX2's 16 registers),
 * addresses one pointer stepped by a runtime stride (OPAQUE_POINTER). */
#define VDW3 8
SEPCONV_INLINE void vdw3_rows(const float *x, int W, int C, const float *wdw, const float *bdw, int ih0, int iw0,
                              int nblk, int r_lo, int r_hi, int q_lo, int q_hi, int cnt, int act, float *out,
                              int cp) {
    const size_t row = (size_t)W * C;
    const float *pb = x + ((ptrdiff_t)ih0 * W + iw0) * C;
    for (int blk = 0; blk < nblk; ++blk) {
        for (int c = 0; c < C; c += VW) {
            vf b = bdw ? vload(bdw + c) : vzero();
            vf a[VDW3];
#pragma GCC unroll 8
            for (int j = 0; j < VDW3; ++j) a[j] = b;
            const float *pr = pb + c;
#pragma GCC unroll 3
            for (int r = 0; r < 3; ++r) {
                if (r < r_lo || r >= r_hi) {
                    pr += row;
                    OPAQUE_POINTER(pr);
                    continue;
                }
                vf w0 = vload(wdw + (size_t)(3 * r) * C + c), w1 = vload(wdw + (size_t)(3 * r + 1) * C + c);
                vf w2 = vload(wdw + (size_t)(3 * r + 2) * C + c);
                const float *pq = pr;
#pragma GCC unroll 10
                for (int q = 0; q < VDW3 + 2; ++q) {
                    if (q >= q_lo && q < q_hi) {
                        vf v = vload(pq);
                        IN_REGISTER(v);
                        if (q < VDW3) a[q] = vfma(v, w0, a[q]);
                        if (q >= 1 && q - 1 < VDW3) a[q - 1] = vfma(v, w1, a[q - 1]);
                        if (q >= 2) a[q - 2] = vfma(v, w2, a[q - 2]);
                    }
                    pq += C;
                    OPAQUE_POINTER(pq);
                }
                pr += row;
                OPAQUE_POINTER(pr);
            }
            float *so = out + c;
#pragma GCC unroll 8
            for (int j = 0; j < VDW3; ++j) {
                if (j < cnt) vstore(so, vact(a[j], act));
                so += cp;
                OPAQUE_POINTER(so);
            }
        }
        pb += (size_t)VDW3 * C;
        out += (size_t)VDW3 * cp;
    }
}
/* vdw3_rows over nblk interior blocks, over one block at a row's ends, and over one block of the image's first or
 * last row (kernel rows in the padding), in functions of their own */
__attribute__((noinline)) static void vdw3_run(const float *x, int W, int C, const float *wdw, const float *bdw,
                                               int ih0, int iw0, int nblk, int act, float *out, int cp) {
    vdw3_rows(x, W, C, wdw, bdw, ih0, iw0, nblk, 0, 3, 0, VDW3 + 2, VDW3, act, out, cp);
}
__attribute__((noinline)) static void vdw3_edge(const float *x, int W, int C, const float *wdw, const float *bdw,
                                                int ih0, int iw0, int q_lo, int q_hi, int cnt, int act, float *out,
                                                int cp) {
    vdw3_rows(x, W, C, wdw, bdw, ih0, iw0, 1, 0, 3, q_lo, q_hi, cnt, act, out, cp);
}
__attribute__((noinline)) static void vdw3_border(const float *x, int W, int C, const float *wdw, const float *bdw,
                                                  int ih0, int iw0, int r_lo, int r_hi, int q_lo, int q_hi, int cnt,
                                                  int act, float *out, int cp) {
    vdw3_rows(x, W, C, wdw, bdw, ih0, iw0, 1, r_lo, r_hi, q_lo, q_hi, cnt, act, out, cp);
}

/* depthwise_run_v for the layers vdw3_rows takes (depthwise3_applies_v): a row's pixels whose input rows are all
 * inside through vdw3_run and vdw3_edge, the image's first and last rows through vdw3_border (their kernel rows in
 * the padding skipped), a single pixel at a row's or tile's end one at a time. */
__attribute__((noinline)) static void depthwise3_run_v(const float *x, int H, int W, int C, const float *wdw,
                                                       const float *bdw, int ph, int pw, int act, int Wo, int p0,
                                                       int m, float *t, int cp) {
    int oh = p0 / Wo, ow = p0 % Wo, i = 0;
    while (i < m) {
        int ih0 = oh - ph, iw0 = ow - pw;
        int cnt = m - i < Wo - ow ? m - i : Wo - ow;
        cnt = cnt < VDW3 ? cnt : VDW3;
        float *out = t + (size_t)i * cp;
        if (ih0 >= 0 && ih0 + 2 < H && cnt == VDW3 && iw0 >= 0 && iw0 + VDW3 + 1 < W) { /* interior blocks at once */
            int nblk = interior_blocks(m - i < Wo - ow ? m - i : Wo - ow, iw0, W, VDW3);
            vdw3_run(x, W, C, wdw, bdw, ih0, iw0, nblk, act, out, cp);
            cnt = nblk * VDW3;
        } else if (ih0 >= 0 && ih0 + 2 < H && cnt >= 2) {
            int q_lo = iw0 < 0 ? -iw0 : 0, q_hi = W - iw0 < VDW3 + 2 ? W - iw0 : VDW3 + 2;
            vdw3_edge(x, W, C, wdw, bdw, ih0, iw0, q_lo, q_hi, cnt, act, out, cp);
        } else if (cnt >= 2) { /* the first or last row: kernel rows in the padding */
            int r_lo = ih0 < 0 ? -ih0 : 0, r_hi = H - ih0 < 3 ? H - ih0 : 3;
            int q_lo = iw0 < 0 ? -iw0 : 0, q_hi = W - iw0 < VDW3 + 2 ? W - iw0 : VDW3 + 2;
            if (r_lo < r_hi) vdw3_border(x, W, C, wdw, bdw, ih0, iw0, r_lo, r_hi, q_lo, q_hi, cnt, act, out, cp);
            else vdw_win3_block8(x, H, W, C, wdw, bdw, 3, 1, ih0, iw0, 1, cnt, act, out, cp);
        } else {
            cnt = 1;
            vdw_pixel(x, H, W, C, wdw, bdw, 3, 3, 1, 1, ih0, iw0, act, out);
        }
        i += cnt;
        ow += cnt;
        if (ow == Wo) { ow = 0; ++oh; }
    }
}

/* Whether depthwise3_run_v takes a layer: a 3x3 kernel, stride 1, dilation 1, whole channel vectors, at most 256
 * channels. Each block of vdw3_rows reads the nine weights of every channel: 9 KiB at 256 channels, which stay in
 * L1 from block to block; at 1024 channels (36 KiB) they do not, and vdw_win3's blocks of two channel vectors, which
 * keep a channel vector's weights in registers along a row, were the faster (docs/design-notes.md). */
static inline int depthwise3_applies_v(int C, int KH, int KW, int sh, int sw, int dh, int dw) {
    return KH == 3 && KW == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1 && C % VW == 0 && C <= 256;
}

/* Depthwise output for pixels [p0, p0 + m) of one image into t[m][cp] (channel vectors). */
static void depthwise_run_v(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                            int KW, int sh, int sw, int ph, int pw, int dh, int dw, int act, int Wo, int p0, int m,
                            float *t, int cp) {
    int oh = p0 / Wo, ow = p0 % Wo, i = 0;
    int slide = sw == 1 && dw == 1 && (KW == 3 || KW == 5 || KW == 7);
    /* a 3-wide kernel at stride 1 or 2 with 16 vector registers: vdw_win3, four pixels of two channel vectors on
     * 64 channels or more, else eight pixels of one (with fewer channels the four-pixel blocks cost more per pixel
     * than the six-pixel window did, docs/design-notes.md) */
    int win3 = VREGS < 32 && KW == 3 && dw == 1 && (sw == 1 || sw == 2);
    int w3s = C >= 8 * VW ? 4 : 8; /* its pixels per block */
    int sv = win3 ? w3s : SLIDE_V(KW); /* pixels per sliding window */
    while (i < m) {
        int ih0 = oh * sh - ph, iw0 = ow * sw - pw;
        int cnt = m - i < Wo - ow ? m - i : Wo - ow;
        cnt = cnt < sv ? cnt : sv;
        if (win3 && cnt >= 2) {
            if (w3s == 4) vdw_win3_block4(x, H, W, C, wdw, bdw, KH, sw, ih0, iw0, dh, cnt, act, t + (size_t)i * cp, cp);
            else vdw_win3_block8(x, H, W, C, wdw, bdw, KH, sw, ih0, iw0, dh, cnt, act, t + (size_t)i * cp, cp);
        } else if (slide && cnt >= 2) {
            int kh_lo = 0, kh_hi = KH;
            while (kh_lo < KH && ih0 + kh_lo * dh < 0) ++kh_lo;
            while (kh_hi > kh_lo && ih0 + (kh_hi - 1) * dh >= H) --kh_hi;
            int q_lo = iw0 < 0 ? -iw0 : 0, q_hi = W - iw0 < sv + KW - 1 ? W - iw0 : sv + KW - 1;
            if (kh_lo == 0 && kh_hi == KH && q_lo == 0 && q_hi == sv + KW - 1 && cnt == sv) {
                /* interior: constant bounds, so the inlined loops have no checks */
                if (KW == 3) VDW_SLIDE_K(3, 0, KH, 0, SLIDE_V(3) + 2, SLIDE_V(3));
                else if (KW == 5) VDW_SLIDE_K(5, 0, KH, 0, SLIDE_V(5) + 4, SLIDE_V(5));
                else VDW_SLIDE_K(7, 0, KH, 0, SLIDE_V(7) + 6, SLIDE_V(7));
            } else {
                if (KW == 3) VDW_SLIDE_K(3, kh_lo, kh_hi, q_lo, q_hi, cnt);
                else if (KW == 5) VDW_SLIDE_K(5, kh_lo, kh_hi, q_lo, q_hi, cnt);
                else VDW_SLIDE_K(7, kh_lo, kh_hi, q_lo, q_hi, cnt);
            }
        } else if (m - i >= 4 && Wo - ow >= 4 && ih0 >= 0 && ih0 + (KH - 1) * dh < H && iw0 >= 0
                   && iw0 + 3 * sw + (KW - 1) * dw < W) {
            cnt = 4; /* other strides and dilations, interior */
            vdw_quad(x, W, C, wdw, bdw, KH, KW, sw, dh, dw, ih0, iw0, act, t + (size_t)i * cp, cp);
        } else {
            cnt = 1;
            vdw_pixel(x, H, W, C, wdw, bdw, KH, KW, dh, dw, ih0, iw0, act, t + (size_t)i * cp);
        }
        i += cnt;
        ow += cnt;
        if (ow == Wo) { ow = 0; ++oh; }
    }
}

/* The flat path (few channels, stride 1; see depthwise_flat_row) with VW-float vectors: output vectors
 * [k0, k0 + nv) of a row segment, nv <= 4. The patterns hold 16 lanes per phase; the first VW are this vector's. */
SEPCONV_INLINE void vflat_block(const float *rows, int ih_lo, long prow, int C, const float *wpat,
                                const float *bpat, int kh_lo, int kh_hi, int KW, int oh, int ph, int pw, int dh,
                                int dw, int act, long f0, long k0, int nv, long n, float *out) {
    vf acc[4];
    int phase[4];
#pragma GCC unroll 4
    for (int q = 0; q < nv; ++q) {
        phase[q] = (VW * (int)(k0 + q)) % C;
        acc[q] = vload(bpat + phase[q] * 16);
    }
    for (int kh = kh_lo; kh < kh_hi; ++kh) {
        const float *row = rows + (oh - ph + kh * dh - ih_lo) * prow + f0 + VW * k0;
        for (int kw = 0; kw < KW; ++kw) {
            const float *in = row + (long)(kw * dw - pw) * C;
            const float *wp = wpat + (size_t)(kh * KW + kw) * C * 16;
#pragma GCC unroll 4
            for (int q = 0; q < nv; ++q) acc[q] = vfma(vload(in + VW * q), vload(wp + phase[q] * 16), acc[q]);
        }
    }
#pragma GCC unroll 4
    for (int q = 0; q < nv; ++q) {
        long at = VW * (k0 + q);
        vstore_n(out + at, vact(acc[q], act), (int)(n - at < VW ? n - at : VW));
    }
}

/* y[r][0 : ncols] = t[r][:C] @ panel[:C][0 : ncols] + bias for r < R <= MR_V (a constant after inlining), ncols <=
 * 16: R x NSUB vector accumulators (at most 12 of AVX2's 16 registers, 24 of NEON's 32); the panel is zero padded to
 * 32 columns, so whole vectors are read. stream: whole vectors are written around the caches (y and ldy 64-byte
 * aligned, see sepconv_fused_dwpw_f32). PF (a constant after inlining): prefetch ah's lines (ahead_t). */
SEPCONV_INLINE void vgemm_rows(const float *t, int cp, int C, const float *bp, const float *bias, int ncols,
                               int act, float *y, int ldy, int stream, int R, ahead_t *ah, int PF) {
    vf acc[MR_V][NSUB];
    const char *pa = PF ? ah->next : NULL;
    long pl = PF ? ah->left : 0;
    int every = PF ? ah->every : 0;
    if (WRITE_PREFETCH && !stream) /* the output lines, requested for writing now: their reads overlap the FMAs */
        for (int r = 0; r < R; ++r) __builtin_prefetch(y + (size_t)r * ldy, 1, 3);
#pragma GCC unroll 4
    for (int s = 0; s < NSUB; ++s) {
        vf b = bias ? vload_n(bias + s * VW, ncols - s * VW) : vzero();
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][s] = b;
    }
    for (int c = 0; c < C; ++c) {
        vf w[NSUB];
#pragma GCC unroll 4
        for (int s = 0; s < NSUB; ++s) w[s] = vload(bp + (size_t)c * NR + s * VW);
        if (PF && (c & every) == 0 && pl > 0) {
            __builtin_prefetch(pa, 0, 3);
            pa += 64;
            --pl;
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            vf a = vset1(t[(size_t)r * cp + c]);
#pragma GCC unroll 4
            for (int s = 0; s < NSUB; ++s) acc[r][s] = vfma(a, w[s], acc[r][s]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int s = 0; s < NSUB; ++s) {
            int n = ncols - s * VW;
            if (n >= VW && stream) vstream(y + (size_t)r * ldy + s * VW, vact(acc[r][s], act));
            else if (n >= VW) vstore(y + (size_t)r * ldy + s * VW, vact(acc[r][s], act));
            else if (n > 0) vstore_n(y + (size_t)r * ldy + s * VW, vact(acc[r][s], act), n);
        }
    }
    if (PF) {
        ah->next = pa;
        ah->left = pl;
    }
}

/* vgemm_rows for the mr rows a block has (1 <= mr <= MR_V), each count a constant after inlining: a short last
 * block computes only its own rows (with the FMA latency and two pipes, even one row's two chains take less time
 * per input channel than a full block's twelve FMAs). */
SEPCONV_INLINE void vgemm_block_pf(const float *t, int cp, int C, const float *bp, const float *bias, int ncols,
                                   int mr, int act, float *y, int ldy, int stream, ahead_t *ah, int PF) {
    switch (mr) {
    case 1: vgemm_rows(t, cp, C, bp, bias, ncols, act, y, ldy, stream, 1, ah, PF); break;
    case 2: vgemm_rows(t, cp, C, bp, bias, ncols, act, y, ldy, stream, 2, ah, PF); break;
    case 3: vgemm_rows(t, cp, C, bp, bias, ncols, act, y, ldy, stream, 3, ah, PF); break;
    case 4: vgemm_rows(t, cp, C, bp, bias, ncols, act, y, ldy, stream, 4, ah, PF); break;
    case 5: vgemm_rows(t, cp, C, bp, bias, ncols, act, y, ldy, stream, 5, ah, PF); break;
    default: vgemm_rows(t, cp, C, bp, bias, ncols, act, y, ldy, stream, MR_V, ah, PF);
    }
}

SEPCONV_INLINE void vgemm_block(const float *t, int cp, int C, const float *bp, const float *bias, int ncols,
                                int mr, int act, float *y, int ldy, int stream) {
    vgemm_block_pf(t, cp, C, bp, bias, ncols, mr, act, y, ldy, stream, NULL, 0);
}
#endif

#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
#if defined(SEPCONV_AVX512)
#define FLAT_VW 16 /* floats per vector of the flat path's blocks */
#define FLAT_BLOCK flat_block
#else
#define FLAT_VW VW
#define FLAT_BLOCK vflat_block
#endif
/* Output pixels [ow0, ow0 + cnt) of row oh on the flat path (see flat_block): kernel rows inside the image only,
 * then the row's vectors in blocks of four. rows: the tile's padded input rows (flat_pad_rows). */
static void depthwise_flat_row(const float *rows, int ih_lo, long prow, int H, int C, const float *wpat,
                               const float *bpat, int KH, int KW, int ph, int pw, int dh, int dw, int act, int oh,
                               int ow0, int cnt, float *out) {
    int kh_lo = 0, kh_hi = KH;
    while (kh_lo < KH && oh - ph + kh_lo * dh < 0) ++kh_lo;
    while (kh_hi > kh_lo && oh - ph + (kh_hi - 1) * dh >= H) --kh_hi;
    long f0 = (long)ow0 * C, n = (long)cnt * C, nvec = (n + FLAT_VW - 1) / FLAT_VW;
    const float *base = rows + flat_left(pw, C);
    /* a constant block count per call (after inlining the accumulators stay in registers; with a variable count
     * they lived on the stack, a store and a reload on every FMA's chain) */
#define FLAT_BLOCK_OF(nv) FLAT_BLOCK(base, ih_lo, prow, C, wpat, bpat, kh_lo, kh_hi, KW, oh, ph, pw, dh, dw, act, f0, k, \
                                     nv, n, out)
    long k = 0;
    for (; k + 4 <= nvec; k += 4) FLAT_BLOCK_OF(4);
    if (nvec - k == 3) FLAT_BLOCK_OF(3);
    else if (nvec - k == 2) FLAT_BLOCK_OF(2);
    else if (nvec - k == 1) FLAT_BLOCK_OF(1);
#undef FLAT_BLOCK_OF
}
#define FLAT_ROW depthwise_flat_row
#endif

#ifdef SEPCONV_AVX512
/* A pair block reads an input window of five rows of 17 pixels (S2_ROWS_WINDOW_FLOATS per channel), one channel
 * vector at a time. Windows wider than S2_ROWS_MAX_BYTES (256 channels and more) took longer in pairs than in
 * depthwise_run's single-row blocks (docs/design-notes.md), so they keep those. */
#define S2_ROWS_WINDOW_FLOATS (5 * 17)
#define S2_ROWS_MAX_BYTES (48 * 1024)
#endif

/* Depthwise output for pixels [p0, p0 + m) of image n into t[m][cp] (row stride cp >= C: a multiple of 16, or C on
 * the flat path (wpat given) and in the portable loop). */
static void depthwise_tile(const float *x, int H, int W, int C, const float *wdw, const float *bdw, int KH, int KW,
                           int sh, int sw, int ph, int pw, int dh, int dw, int act, int Wo, int p0, int m,
                           float *t, int cp, const float *wpat, const float *bpat, float *padded) {
#ifdef FLAT_ROW
    if (wpat) { /* the flat path (few channels, stride 1 both ways): row segments of the tile, packed rows */
        int ih_lo = p0 / Wo - ph, ih_hi = (p0 + m - 1) / Wo - ph + (KH - 1) * dh;
        ih_lo = ih_lo < 0 ? 0 : ih_lo;
        ih_hi = ih_hi >= H ? H - 1 : ih_hi;
        long prow = flat_row_floats(W, C, pw);
        if (ih_lo <= ih_hi) flat_pad_rows(x, W, C, pw, ih_lo, ih_hi, prow, padded);
        for (int i = 0, p = p0; i < m;) {
            int oh = p / Wo, ow = p % Wo, cnt = Wo - ow < m - i ? Wo - ow : m - i;
            FLAT_ROW(padded, ih_lo, prow, H, C, wpat, bpat, KH, KW, ph, pw, dh, dw, act, oh, ow, cnt,
                     t + (size_t)i * cp);
            i += cnt;
            p += cnt;
        }
        return;
    }
#endif
#ifdef SEPCONV_AVX512
    int i = 0;
    int s2_rows = s2k3_applies(C, KH, KW, sh, sw, dh, dw) && Wo >= 8
                  && S2_ROWS_WINDOW_FLOATS * C * sizeof(float) <= S2_ROWS_MAX_BYTES;
    if (s2_rows || pairs_apply(KW, sh, sw, dh, dw)) {
        /* the tile's whole rows two at a time (at stride 2 where their five input rows are inside the image, else
         * one); a partial row at either end, and at stride 1 an odd last row, through depthwise_run */
        int head = p0 % Wo ? (Wo - p0 % Wo < m ? Wo - p0 % Wo : m) : 0;
        if (head) depthwise_run(x, H, W, C, wdw, bdw, KH, KW, sh, sw, ph, pw, dh, dw, act, Wo, p0, head, t, cp);
        for (i = head; s2_rows && m - i >= Wo;) {
            int oh = (p0 + i) / Wo, ih0 = 2 * oh - ph, two = m - i >= 2 * Wo && ih0 >= 0 && ih0 + 4 < H;
            depthwise3s2_rows(x, H, W, C, wdw, bdw, ph, pw, act, Wo, oh, two, t + (size_t)i * cp,
                              two ? t + (size_t)(i + Wo) * cp : NULL, cp);
            i += two ? 2 * Wo : Wo;
        }
        for (; !s2_rows && m - i >= 2 * Wo; i += 2 * Wo)
            depthwise_row_pair(x, H, W, C, wdw, bdw, KH, KW, ph, pw, act, Wo, (p0 + i) / Wo, t + (size_t)i * cp,
                               t + (size_t)(i + Wo) * cp, cp);
    }
    if (i < m) depthwise_run(x, H, W, C, wdw, bdw, KH, KW, sh, sw, ph, pw, dh, dw, act, Wo, p0 + i, m - i,
                             t + (size_t)i * cp, cp);
    return;
#elif defined(SEPCONV_VEC)
    if (depthwise3_applies_v(C, KH, KW, sh, sw, dh, dw))
        depthwise3_run_v(x, H, W, C, wdw, bdw, ph, pw, act, Wo, p0, m, t, cp);
    else
        depthwise_run_v(x, H, W, C, wdw, bdw, KH, KW, sh, sw, ph, pw, dh, dw, act, Wo, p0, m, t, cp);
    return;
#endif
    (void)wpat; (void)bpat; (void)padded;
    for (int i = 0; i < m; ++i) {
        int p = p0 + i, oh = p / Wo, ow = p % Wo;
        float *out = t + (size_t)i * cp;
        if (bdw) memcpy(out, bdw, sizeof(float) * C); else memset(out, 0, sizeof(float) * C);
        if (cp > C) memset(out + C, 0, sizeof(float) * (cp - C));
        for (int kh = 0; kh < KH; ++kh) {
            int ih = oh * sh - ph + kh * dh;
            if (ih < 0 || ih >= H) continue;
            for (int kw = 0; kw < KW; ++kw) {
                int iw = ow * sw - pw + kw * dw;
                if (iw < 0 || iw >= W) continue;
                const float *xin = x + ((size_t)ih * W + iw) * C;
                const float *wk = wdw + ((size_t)kh * KW + kw) * C;
                for (int c = 0; c < C; ++c) out[c] += xin[c] * wk[c];
            }
        }
        if (act != ACT_NONE)
            for (int c = 0; c < C; ++c) out[c] = act1(out[c], act);
    }
}

#ifdef SEPCONV_AVX512

/* acc[r][:] += t[r][:C] @ panel[:C][0:32] for the R rows of a register block (two AVX-512 vectors per row; R a
 * constant after inlining: MR, or MR + 1 for a tile's last seven rows). PF (a constant after inlining): prefetch
 * ah's lines (ahead_t), 1 into L1 (the next weight panel, panel_ahead), 2 into L2 (the next job's input,
 * input_ahead); 0 none. */
static inline __attribute__((always_inline)) void fma_rows(const float *t, int cp, int C, const float *bp,
                                                           __m512 acc[][2], int R, ahead_t *ah, int PF) {
    const char *pa = PF ? ah->next : NULL;
    long pl = PF ? ah->left : 0;
    int every = PF ? ah->every : 0;
    for (int c = 0; c < C; ++c) {
        __m512 v0 = _mm512_loadu_ps(bp + (size_t)c * NR), v1 = _mm512_loadu_ps(bp + (size_t)c * NR + 16);
        if (PF && (c & every) == 0 && pl > 0) {
            if (PF == 1) __builtin_prefetch(pa, 0, 3);
            else __builtin_prefetch(pa, 0, 2);
            pa += 64;
            --pl;
        }
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            __m512 a = _mm512_set1_ps(t[(size_t)r * cp + c]);
            acc[r][0] = _mm512_fmadd_ps(a, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, v1, acc[r][1]);
        }
    }
    if (PF) {
        ah->next = pa;
        ah->left = pl;
    }
}

/* A full register block, R pixels x NR columns (see gemm_block; R = MR or MR + 1, a constant after inlining). Its
 * own function, with accumulators indexed only by unrolled constants: inside gemm_block, whose other paths index
 * the accumulators by a runtime row count, the compiler kept them in memory and spilled all twelve after the loop
 * over C. MR + 1 rows take the place of a block of MR and a block of one: a one-row block has only two chains of
 * FMAs, so it waits on the FMA latency at every input channel. */
static inline __attribute__((always_inline)) void gemm_block_full(const float *t, int cp, int C, const float *bp,
                                                                  const float *bias, int j0, int act, float *y,
                                                                  int ldy, int stream, int R, ahead_t *ah, int PF) {
    __m512 acc[MR + 1][2];
    __m512 b0 = bias ? _mm512_loadu_ps(bias + j0) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_loadu_ps(bias + j0 + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) { acc[r][0] = b0; acc[r][1] = b1; }
    fma_rows(t, cp, C, bp, acc, R, ah, PF);
    if (stream) { /* around the cache: no read-for-ownership of the output's lines */
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            _mm512_stream_ps(y + (size_t)r * ldy + j0, act16(acc[r][0], act));
            _mm512_stream_ps(y + (size_t)r * ldy + j0 + 16, act16(acc[r][1], act));
        }
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            _mm512_storeu_ps(y + (size_t)r * ldy + j0, act16(acc[r][0], act));
            _mm512_storeu_ps(y + (size_t)r * ldy + j0 + 16, act16(acc[r][1], act));
        }
    }
}

/* y[mr][j0 : j0 + ncols] = t[mr][:C] @ panel[:C][:ncols] + bias[j0:], masked at the last columns.
 * panel: the NR = 32 columns of the pointwise weight starting at j0, packed [C][32]. stream: full blocks are
 * written with non-temporal stores (y and ldy 64-byte aligned; see sepconv_fused_dwpw_f32). */
static inline void gemm_block(const float *t, int cp, int C, const float *bp, const float *bias, int j0,
                              int ncols, int mr, int act, float *y, int ldy, int stream) {
    if (mr == MR && ncols == NR) {
        gemm_block_full(t, cp, C, bp, bias, j0, act, y, ldy, stream, MR, NULL, 0);
        return;
    }
    if (mr == MR + 1 && ncols == NR) {
        gemm_block_full(t, cp, C, bp, bias, j0, act, y, ldy, stream, MR + 1, NULL, 0);
        return;
    }
    __m512 acc[MR][2];
    int nv = ncols > 16 ? 2 : 1;
    __mmask16 k0 = ncols >= 16 ? 0xFFFF : (__mmask16)((1u << ncols) - 1);
    __mmask16 k1 = nv == 2 ? (ncols >= 32 ? 0xFFFF : (__mmask16)((1u << (ncols - 16)) - 1)) : 0;
    __m512 b0init = bias ? _mm512_maskz_loadu_ps(k0, bias + j0) : _mm512_setzero_ps();
    __m512 b1init = (bias && nv == 2) ? _mm512_maskz_loadu_ps(k1, bias + j0 + 16) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) { acc[r][0] = b0init; acc[r][1] = b1init; }
    if (mr == MR && nv == 2) { /* the last, partial panel (17-31 columns; the packed weight is zero padded) */
        fma_rows(t, cp, C, bp, acc, MR, NULL, 0);
    } else {
        for (int c = 0; c < C; ++c) {
            __m512 v0 = _mm512_loadu_ps(bp + (size_t)c * NR);
            __m512 v1 = nv == 2 ? _mm512_loadu_ps(bp + (size_t)c * NR + 16) : _mm512_setzero_ps();
            for (int r = 0; r < mr; ++r) {
                __m512 a = _mm512_set1_ps(t[(size_t)r * cp + c]);
                acc[r][0] = _mm512_fmadd_ps(a, v0, acc[r][0]);
                if (nv == 2) acc[r][1] = _mm512_fmadd_ps(a, v1, acc[r][1]);
            }
        }
    }
    if (ncols == NR && stream) { /* around the cache: no read-for-ownership of the output's lines */
        for (int r = 0; r < mr; ++r) {
            _mm512_stream_ps(y + (size_t)r * ldy + j0, act16(acc[r][0], act));
            _mm512_stream_ps(y + (size_t)r * ldy + j0 + 16, act16(acc[r][1], act));
        }
        return;
    }
    if (ncols == NR) { /* full block: plain stores (masked stores are slow on some CPUs, AMD Zen among them) */
        for (int r = 0; r < mr; ++r) {
            _mm512_storeu_ps(y + (size_t)r * ldy + j0, act16(acc[r][0], act));
            _mm512_storeu_ps(y + (size_t)r * ldy + j0 + 16, act16(acc[r][1], act));
        }
        return;
    }
    for (int r = 0; r < mr; ++r) {
        _mm512_mask_storeu_ps(y + (size_t)r * ldy + j0, k0, act16(acc[r][0], act));
        if (nv == 2) _mm512_mask_storeu_ps(y + (size_t)r * ldy + j0 + 16, k1, act16(acc[r][1], act));
    }
}
#endif

/* Prefetch (into L2) the next `count` of the 64-byte lines [*next, end): spreads the next job's input reads over
 * this job's pointwise GEMM, which computes without touching memory. */
static inline void prefetch_lines(const char **next, const char *end, long count) {
#if defined(__GNUC__)
    const char *p = *next;
    for (; count > 0 && p < end; --count, p += 64) __builtin_prefetch(p, 0, 2);
    *next = p;
#else
    (void)next; (void)end; (void)count;
#endif
}

/* The next job's input lines (from next, before end; next < end) that a full register block prefetches into L2
 * while it computes: up to `count`, one at each input channel c with (c & every) == 0, every = 2^k - 1 the largest
 * that still reaches them in C channels (lines beyond C are left to prefetch_lines after the block). Issued all at
 * a block's start instead, the prefetches held the core's line fill buffers while the block's own loads and stores
 * waited on them: on an Intel core the 1x1 step took up to 1.09x its time (docs/design-notes.md). */
static inline ahead_t input_ahead(const char *next, const char *end, long count, int C) {
    long left = (long)((end - next + 63) / 64);
    ahead_t a = {next, count < left ? count : left, 0};
    while (a.left > 0 && 2 * (a.every + 1) * a.left <= C) a.every = 2 * a.every + 1;
    return a;
}

/* pointwise_tile's work (below); LA (a constant after inlining): each panel's register blocks but the first also
 * prefetch the next panel (panel_ahead); the other full blocks spread the next job's input prefetches over their
 * input channels (input_ahead), the short ones issue theirs at their start. */
SEPCONV_INLINE void pointwise_panels(const float *t, int m, int cp, int C, const float *b, const float *bias,
                                     int Cout, int j_begin, int j_end, int act, float *y, int stream, const char *pf,
                                     const char *pf_end, int LA) {
    long blocks = (long)((j_end - j_begin + NR - 1) / NR) * ((m + MR - 1) / MR);
    long lines = pf < pf_end ? (long)((pf_end - pf + 63) / 64) : 0;
    long per_block = (lines + blocks - 1) / blocks;
#ifdef SEPCONV_AVX512
    for (int j0 = j_begin; j0 < j_end; j0 += NR) {
        int ncols = j_end - j0 < NR ? j_end - j0 : NR;
        const float *panel = b + (size_t)(j0 / NR) * C * NR;
        ahead_t ah = {NULL, 0, 0};
        if (LA && j0 + NR < j_end) ah = panel_ahead(panel, C, m / MR);
        for (int i0 = 0; i0 < m;) {
            int mr = m - i0 < MR ? m - i0 : MR;
            if (m - i0 == MR + 1 && ncols == NR) mr = MR + 1; /* the last seven rows: one block (gemm_block_full) */
            /* full blocks but a panel's first prefetch (a short block, one of a few, does not) */
            int ahead = LA && ah.left > 0 && (i0 > 0 || m < 2 * MR) && ncols == NR;
            if (per_block && pf < pf_end && !ahead && (mr == MR || mr == MR + 1) && ncols == NR) {
                ahead_t ia = input_ahead(pf, pf_end, per_block, C);
                if (mr == MR)
                    gemm_block_full(t + (size_t)i0 * cp, cp, C, panel, bias, j0, act, y + (size_t)i0 * Cout, Cout,
                                    stream, MR, &ia, 2);
                else
                    gemm_block_full(t + (size_t)i0 * cp, cp, C, panel, bias, j0, act, y + (size_t)i0 * Cout, Cout,
                                    stream, MR + 1, &ia, 2);
                pf = ia.next;
                if (ia.left > 0) prefetch_lines(&pf, pf_end, ia.left);
                i0 += mr;
                continue;
            }
            if (per_block) prefetch_lines(&pf, pf_end, per_block);
            if (ahead && mr == MR)
                gemm_block_full(t + (size_t)i0 * cp, cp, C, panel, bias, j0, act, y + (size_t)i0 * Cout, Cout, stream,
                                MR, &ah, 1);
            else if (ahead && mr == MR + 1)
                gemm_block_full(t + (size_t)i0 * cp, cp, C, panel, bias, j0, act, y + (size_t)i0 * Cout, Cout, stream,
                                MR + 1, &ah, 1);
            else
                gemm_block(t + (size_t)i0 * cp, cp, C, panel, bias, j0, ncols, mr, act, y + (size_t)i0 * Cout, Cout,
                           stream);
            i0 += mr;
        }
    }
#elif defined(SEPCONV_VEC)
    /* the rows in ceil(m / MR_V) blocks of nearly equal size (MR_V or one less where m is no multiple of it)
     * rather than full blocks and a short last one: the one row left of 49 (7x7 layers) is two chains of FMAs,
     * which wait on the FMA latency (AVX2: 4 cycles an input channel, where a full block's twelve FMAs take 6) */
    int row_blocks = (m + MR_V - 1) / MR_V, rows_short = m > 0 ? m / row_blocks : 0;
    int blocks_long = m > 0 ? m % row_blocks : 0; /* the first blocks_long blocks take rows_short + 1 rows */
    for (int j0 = j_begin; j0 < j_end; j0 += NR) {
        int ncols = j_end - j0 < NR ? j_end - j0 : NR, passes = row_blocks * ((ncols + 15) / 16);
        const float *panel = b + (size_t)(j0 / NR) * C * NR;
        ahead_t ah = {NULL, 0, 0};
        if (LA && j0 + NR < j_end) ah = panel_ahead(panel, C, passes);
        for (int k = 0, i0 = 0, mr; k < row_blocks; ++k, i0 += mr) {
            mr = rows_short + (k < blocks_long);
            if (per_block) prefetch_lines(&pf, pf_end, per_block);
            for (int sub = 0; sub < ncols; sub += 16) {
                if (LA && ah.left > 0 && (k > 0 || sub > 0 || passes == 1))
                    vgemm_block_pf(t + (size_t)i0 * cp, cp, C, panel + sub, bias ? bias + j0 + sub : NULL,
                                   ncols - sub < 16 ? ncols - sub : 16, mr, act, y + (size_t)i0 * Cout + j0 + sub,
                                   Cout, stream, &ah, 1);
                else
                    vgemm_block(t + (size_t)i0 * cp, cp, C, panel + sub, bias ? bias + j0 + sub : NULL,
                                ncols - sub < 16 ? ncols - sub : 16, mr, act, y + (size_t)i0 * Cout + j0 + sub,
                                Cout, stream);
            }
        }
    }
#else
    (void)stream;
    (void)LA;
    for (int i = 0; i < m; ++i) {
        if (per_block) prefetch_lines(&pf, pf_end, (lines + m - 1) / m);
        float *yi = y + (size_t)i * Cout;
        for (int j = j_begin; j < j_end; ++j) yi[j] = bias ? bias[j] : 0.f;
        for (int c = 0; c < C; ++c) {
            float a = t[(size_t)i * cp + c];
            for (int j = j_begin; j < j_end; ++j) yi[j] += a * b[((size_t)(j / NR) * C + c) * NR + j % NR];
        }
        if (act != ACT_NONE)
            for (int j = j_begin; j < j_end; ++j) yi[j] = act1(yi[j], act);
    }
#endif
}

/* y[m][Cout] = t[m][:C] @ B + bias, B packed in column panels: b[j / NR][c][j % NR] (zero padded).
 * [pf, pf_end): memory to prefetch while computing (the next job's input), spread over the register blocks. */
NOCLONE static void pointwise_tile(const float *t, int m, int cp, int C, const float *b, const float *bias, int Cout,
                           int j_begin, int j_end, int act, float *y, int stream, const char *pf,
                           const char *pf_end) {
    pointwise_panels(t, m, cp, C, b, bias, Cout, j_begin, j_end, act, y, stream, pf, pf_end, 0);
}

#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
/* pointwise_tile with each panel's register blocks but the first also prefetching the next panel (panel_ahead) */
NOCLONE static void pointwise_tile_ahead(const float *t, int m, int cp, int C, const float *b, const float *bias,
                                         int Cout, int j_begin, int j_end, int act, float *y, int stream,
                                         const char *pf, const char *pf_end) {
    pointwise_panels(t, m, cp, C, b, bias, Cout, j_begin, j_end, act, y, stream, pf, pf_end, 1);
}
#endif

#ifdef SEPCONV_AVX512
/* The rows [0, m) and whole panels [j_begin, j_end) of pointwise_tile's work, m a multiple of MR, rows outer: the
 * register blocks of every panel for the same MR pixels one after the other, so that the tile's rows are read from
 * L1 after the first panel, where in panel order each block reads MR rows that the panel's earlier blocks have
 * moved out of L1. Faster where a block is short (few input channels; docs/design-notes.md). No call in the loop:
 * with one (the partial blocks) the compiler kept the loop's state in memory, which cost as much as the order
 * saved. For a weight of at most ROWS_OUTER_MAX_BYTES, a quarter of a 1 MiB L2 cache, as each register block
 * goes through all of it: with a thread's share of 512 KiB the 'gemm' engine's step took longer. A definition
 * on the command line replaces it (0: panel order everywhere; benchmarks/bench_gemm_harness.py --variant). */
#ifndef ROWS_OUTER_MAX_BYTES
#define ROWS_OUTER_MAX_BYTES (256 * 1024)
#endif
NOCLONE static void pointwise_rows_outer(const float *t, int m, int cp, int C, const float *b, const float *bias,
                                         int Cout, int j_begin, int j_end, int act, float *y, int stream,
                                         const char *pf, const char *pf_end) {
    long blocks = (long)((j_end - j_begin) / NR) * (m / MR);
    long lines = pf < pf_end ? (long)((pf_end - pf + 63) / 64) : 0;
    long per_block = blocks ? (lines + blocks - 1) / blocks : 0;
    for (int i0 = 0; i0 < m; i0 += MR)
        for (int j0 = j_begin; j0 < j_end; j0 += NR) {
            if (per_block && pf < pf_end) {
                ahead_t ia = input_ahead(pf, pf_end, per_block, C);
                gemm_block_full(t + (size_t)i0 * cp, cp, C, b + (size_t)(j0 / NR) * C * NR, bias, j0, act,
                                y + (size_t)i0 * Cout, Cout, stream, MR, &ia, 2);
                pf = ia.next;
                if (ia.left > 0) prefetch_lines(&pf, pf_end, ia.left);
                continue;
            }
            if (per_block) prefetch_lines(&pf, pf_end, per_block);
            gemm_block_full(t + (size_t)i0 * cp, cp, C, b + (size_t)(j0 / NR) * C * NR, bias, j0, act,
                            y + (size_t)i0 * Cout, Cout, stream, MR, NULL, 0);
        }
}
#endif

/* The 1x1 step on one tile: pointwise_tile_ahead for a weight of AHEAD_MIN_BYTES or more and a tile of at most
 * AHEAD_MAX_ROWS pixels; else, for a weight of at most ROWS_OUTER_MAX_BYTES (AVX-512), pointwise_rows_outer for
 * the whole register blocks and pointwise_tile for the rest (where the caller asks for it: rows_outer); else
 * pointwise_tile. A weight of AHEAD_MIN_BYTES is read from memory in each call that uses it where the tiles are
 * few (a layer of few pixels and many channels). The register blocks read a panel in whole rows (AVX-512) or one
 * 16-column half per pass, every other line (AVX2, NEON), which the hardware prefetchers do not run ahead of;
 * without the look-ahead the step waited on the weight's reads (docs/design-notes.md). Functions of their own
 * rather than checks in one: the speed of pointwise_tile's loops shifts with any change to the code around them. */
static inline void pointwise_step(const float *t, int m, int cp, int C, const float *b, const float *bias, int Cout,
                                  int j_begin, int j_end, int act, float *y, int stream, const char *pf,
                                  const char *pf_end, int rows_outer) {
#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
    if (m <= AHEAD_MAX_ROWS && (long)C * Cout * (long)sizeof(float) >= AHEAD_MIN_BYTES) {
        pointwise_tile_ahead(t, m, cp, C, b, bias, Cout, j_begin, j_end, act, y, stream, pf, pf_end);
        return;
    }
#endif
#ifdef SEPCONV_AVX512
    /* whole panels and blocks of MR rows rows outer; the rest (a partial last panel, the last rows: seven where
     * m % MR is 1, see pointwise_panels) with pointwise_tile */
    int m_full = m / MR * MR - (m % MR == 1 && m > MR ? MR : 0), j_full = j_begin + (j_end - j_begin) / NR * NR;
    if (rows_outer && (long)C * (j_end - j_begin) * (long)sizeof(float) <= ROWS_OUTER_MAX_BYTES && m_full > 0 &&
        j_full > j_begin) {
        pointwise_rows_outer(t, m_full, cp, C, b, bias, Cout, j_begin, j_full, act, y, stream, pf, pf_end);
        if (j_full < j_end)
            pointwise_tile(t, m_full, cp, C, b, bias, Cout, j_full, j_end, act, y, stream, NULL, NULL);
        if (m_full < m)
            pointwise_tile(t + (size_t)m_full * cp, m - m_full, cp, C, b, bias, Cout, j_begin, j_end, act,
                           y + (size_t)m_full * Cout, stream, NULL, NULL);
        return;
    }
#else
    (void)rows_outer;
#endif
    pointwise_tile(t, m, cp, C, b, bias, Cout, j_begin, j_end, act, y, stream, pf, pf_end);
}

/* Panel q of B (B[k][j] = w[k w_k + j w_n], columns [32 q, 32 q + 32) of N) into panel[K][32], zero padded. */
static void pack_panel(const float *w, long w_k, long w_n, int K, int N, int q, float *panel) {
    int cols = N - q * NR < NR ? N - q * NR : NR;
    if (cols < NR) memset(panel, 0, (size_t)K * NR * sizeof(float));
    if (w_k == 1) { /* B's columns are w's rows (the forward pass): a transpose, in blocks of 8 columns x 16 rows
                     * of B, so that the lines it reads (8 rows of w: no more than an L1 set holds where w's rows
                     * are 4 KiB apart) and writes (16 rows of the panel) stay in L1 */
        for (int j0 = 0; j0 < cols; j0 += 8) {
            int j1 = cols - j0 < 8 ? cols : j0 + 8;
            for (int k0 = 0; k0 < K; k0 += 16) {
                int k1 = K - k0 < 16 ? K : k0 + 16;
                for (int jj = j0; jj < j1; ++jj) {
                    const float *src = w + (size_t)(q * NR + jj) * w_n;
                    for (int k = k0; k < k1; ++k) panel[(size_t)k * NR + jj] = src[k];
                }
            }
        }
        return;
    }
    for (int k = 0; k < K; ++k)
        for (int jj = 0; jj < cols; ++jj) panel[(size_t)k * NR + jj] = w[(size_t)k * w_k + (size_t)(q * NR + jj) * w_n];
}

/* y[P][N] = a[P][:K] @ B + bias, B[k][j] = w[k * w_k + j * w_n] (any strides: a 1x1 convolution's weight, Cout x
 * Cin, for its forward pass, or that weight read transposed for its input gradient). a: P rows (pixels of a
 * channels-last tensor) of row stride lda >= K; y: P rows of N floats; bias: [N] or NULL. B is packed once per call
 * into the fused kernel's 32-column panels (zero padded), then the rows are multiplied straight from a, `chunk` rows
 * at a time, by the fused kernel's 1x1 step (pointwise_tile), the chunks or the panels dealt to `threads` OpenMP
 * threads (see below). Plain stores: the result is read again soon (a training step). Returns 0, -1 if the panels
 * could not be allocated, -2 for a size below 1 or lda < K. */
int sepconv_gemm_f32(long P, int K, int N, const float *a, long lda, const float *w, long w_k, long w_n,
                     const float *bias, float *y, int chunk, int threads) {
    if (P < 1 || K < 1 || N < 1 || chunk < 1 || lda < K) return -2;
    int panels = (N + NR - 1) / NR;
    float *b = (float *)aligned_alloc(64, ((size_t)panels * K * NR * sizeof(float) + 63) / 64 * 64);
    if (!b) return -1;
    long chunks = (P + chunk - 1) / chunk;
    /* Several threads share the work by panels (each thread reads its share of the weight only, and packs it) when
     * there are fewer rows than columns or fewer chunks than threads (the weight outweighs the rows: deep layers
     * at batch 1); else by chunks, a multiple of `threads` of them, of about equal size (a multiple of MR rows). */
    int groups = 1;
    if (threads > 1 && panels > 1 && (P < N || chunks < threads)) groups = threads < panels ? threads : panels;
    else if (threads > 1 && chunks > 1) {
        chunks = (chunks + threads - 1) / threads * threads;
        long rows = (P + chunks - 1) / chunks;
        chunk = (int)((rows + 5) / 6 * 6);
        chunks = (P + chunk - 1) / chunk;
    }
    int per_group = (panels + groups - 1) / groups;
    long jobs = chunks * groups; /* group-major: a static schedule gives each thread one group's panels */
    (void)threads; /* used by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        /* the threads pack the panels (the weight can be MiBs), then multiply once all are packed */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int q = 0; q < panels; ++q) pack_panel(w, w_k, w_n, K, N, q, b + (size_t)q * K * NR);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long job = 0; job < jobs; ++job) {
            long p0 = job % chunks * chunk;
            int g = (int)(job / chunks), m = P - p0 < chunk ? (int)(P - p0) : chunk;
            int j_begin = g * per_group * NR, j_end = (g + 1) * per_group * NR < N ? (g + 1) * per_group * NR : N;
            if (j_begin < j_end)
                pointwise_step(a + (size_t)p0 * lda, m, (int)lda, K, b, bias, N, j_begin, j_end, ACT_NONE,
                               y + (size_t)p0 * N, 0, NULL, NULL, 1);
        }
    }
    free(b);
    return 0;
}

/* Orders this thread's non-temporal stores (store_rows, the 1x1 step's streamed output) before its later stores:
 * called once a thread has written them, before the caller may read them. */
static inline void stream_fence(void) {
#ifdef SEPCONV_AVX512
    _mm_sfence();
#elif defined(SEPCONV_VEC)
    vstream_fence();
#endif
}

/* m rows of C floats from t (row stride cp, 64-byte aligned) to dst (row stride ld >= C), with non-temporal stores
 * where dst is 64-byte aligned and C and ld are multiples of 16 (the caller fences: stream_fence). */
static void store_rows(float *dst, long ld, const float *t, int m, int C, int cp) {
#if defined(SEPCONV_AVX512)
    if (C % 16 == 0 && ld % 16 == 0 && ((uintptr_t)dst & 63) == 0) {
        for (int i = 0; i < m; ++i)
            for (int c = 0; c < C; c += 16)
                _mm512_stream_ps(dst + (size_t)i * ld + c, _mm512_load_ps(t + (size_t)i * cp + c));
        return;
    }
#elif defined(SEPCONV_VEC_AVX2)
    if (C % 16 == 0 && ld % 16 == 0 && ((uintptr_t)dst & 63) == 0) {
        for (int i = 0; i < m; ++i)
            for (int c = 0; c < C; c += VW) vstream(dst + (size_t)i * ld + c, vload(t + (size_t)i * cp + c));
        return;
    }
#endif
    for (int i = 0; i < m; ++i) memcpy(dst + (size_t)i * ld, t + (size_t)i * cp, sizeof(float) * C);
}

/* B[k][j] = w[k * w_k + j * w_n] (K x N) into the fused kernel's panels, [ceil(N / NR)][K][NR], zero padded (panels
 * 64-byte aligned), on `threads` threads: the layout sepconv_fused_dwpw_f32 reads its 1x1 weight in. */
void sepconv_pack_panels_f32(const float *w, long w_k, long w_n, int K, int N, float *panels, int threads) {
    int count = (N + NR - 1) / NR;
    (void)threads; /* used by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && count > 1)
#endif
    for (int q = 0; q < count; ++q) pack_panel(w, w_k, w_n, K, N, q, panels + (size_t)q * K * NR);
}

/* x: [N][H][W][C]; wdw: [KH][KW][C]; bdw: [C] or NULL; wpw: [ceil(Cout / NR)][C][NR] (64-byte aligned, zero
 * padded); bpw: [Cout] or NULL; y: [N][Ho][Wo][Cout]; act: 0 none, 1 ReLU, 2 ReLU6. mid: NULL, or [N][Ho][Wo][C]
 * to receive the depthwise step's output as well (a training step keeps it for the 1x1 weight gradient; written
 * with non-temporal stores where it can, as it is read only in the backward pass).
 *
 * The work is split into jobs: (image, tile of `tile` output pixels, group of output-channel panels), numbered
 * in that order; a call runs jobs [job_begin, job_end) on `threads` OpenMP threads (built with -fopenmp, the
 * process's OpenMP runtime is PyTorch's own libgomp.so.1, so the kernel shares PyTorch's worker threads
 * instead of competing with them). `groups` > 1 splits the output channels when there are fewer tiles than
 * threads (each group recomputes its tile's depthwise step). stream != 0 writes y with non-temporal stores
 * where it can (AVX-512 or AVX2, y 64-byte aligned, Cout a multiple of 16): an output larger than the caches is then
 * not read into them before it is written (the caller decides by size: for an output that the next layer
 * would find in cache, plain stores are better). parts: 3 computes the layer; 1 only the depthwise step (into the
 * tile buffer: y is not written), 2 only the pointwise step (on a tile of ones): benchmarks/bench_kernels.py times the
 * two parts apart. Returns 0, or -1 if the tile buffer could not be allocated, -2 for a job range outside
 * [0, sepconv_fused_jobs()) or parts outside 1-3. */
long sepconv_fused_jobs(int N, int Ho, int Wo, int tile, int groups) {
    return (long)N * ((Ho * Wo + tile - 1) / tile) * groups;
}

int sepconv_fused_dwpw_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                           int KW, int sh, int sw, int ph, int pw, int dh, int dw, int dw_act, const float *wpw,
                           const float *bpw, int Cout, int pw_act, float *y, float *mid, int Ho, int Wo, int tile,
                           int groups, int stream, int parts, long job_begin, long job_end, int threads) {
    /* row stride of the depthwise tile: C rounded up to 16, plus 16 so that consecutive rows do not sit at the
     * input's stride modulo 4 KiB (4K aliasing between the tile's stores and the input's loads; a precaution,
     * no effect measured on this project's CPU) */
    stream = stream && Cout % 16 == 0 && ((uintptr_t)y & 63) == 0;
    (void)threads; /* used by the OpenMP pragma only */
    int cp = (C + 15) / 16 * 16 + 16;
    int P = Ho * Wo;
    if (job_begin < 0 || job_end > sepconv_fused_jobs(N, Ho, Wo, tile, groups) || parts < 1 || parts > 3) return -2;
    float *wpat = NULL, *bpat = NULL;
    size_t pad_bytes = 0;
#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
#ifdef SEPCONV_AVX512
    if (C <= FLAT_MAX_C && sh == 1 && sw == 1) {
#else
    if (C <= FLAT_MAX_C && C < VW && sh == 1 && sw == 1) {
#endif /* the flat path (see depthwise_flat_row): packed tile rows */
        cp = C;
        wpat = (float *)aligned_alloc(64, sizeof(float) * ((size_t)KH * KW * C * 16 + (size_t)C * 16)); /* C * 16 floats: whole lines */
        if (!wpat) return -1;
        bpat = wpat + (size_t)KH * KW * C * 16;
        flat_patterns(wdw, bdw, KH, KW, C, wpat, bpat);
        /* input rows one tile reaches: its output rows (at most (tile - 1) / Wo + 2) and the kernel's extent */
        pad_bytes = round_up((size_t)((tile - 1) / Wo + 2 + (KH - 1) * dh) * flat_row_floats(W, C, pw) *
                             sizeof(float), FLAT_ALIGN);
    }
#endif
    int tiles_per_image = (P + tile - 1) / tile;
    int panels = (Cout + NR - 1) / NR;
    int per_group = (panels + groups - 1) / groups;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && job_end - job_begin > 1)
#endif
    {
        /* with the flat path's padded input rows after the tile, both page-aligned (FLAT_ALIGN) */
        size_t tile_bytes = round_up((size_t)tile * cp * sizeof(float), pad_bytes ? FLAT_ALIGN : 64);
        float *t = (float *)aligned_alloc(pad_bytes ? FLAT_ALIGN : 64, tile_bytes + pad_bytes);
        float *padded = t && pad_bytes ? t + tile_bytes / sizeof(float) : NULL;
        /* the pointwise part alone: on ones, not on garbage (which may hold NaNs or subnormals), and not on zeros,
         * whose all-zero output lines stream to memory much faster than other data on some hosts
         * (docs/design-notes.md) */
        if (t && !(parts & 1))
            for (size_t i = 0; i < tile_bytes / sizeof(float); ++i) t[i] = 1.f;
        if (!t) mark_failed(&failed);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long job = job_begin; job < job_end; ++job) {
            if (!t) continue;
            int g = (int)(job % groups);
            long rest = job / groups;
            int n = (int)(rest / tiles_per_image), p0 = (int)(rest % tiles_per_image) * tile;
            int m = P - p0 < tile ? P - p0 : tile;
            int j_begin = g * per_group * NR, j_end = (g + 1) * per_group * NR;
            if (j_end > Cout) j_end = Cout;
            if (j_begin >= j_end) continue;
            if (parts & 1) {
                depthwise_tile(x + (size_t)n * H * W * C, H, W, C, wdw, bdw, KH, KW, sh, sw, ph, pw, dh, dw, dw_act,
                               Wo, p0, m, t, cp, wpat, bpat, padded);
                if (mid && g == 0) store_rows(mid + ((size_t)n * P + p0) * C, C, t, m, C, cp);
            }
            if (!(parts & 2)) continue;
            /* the input rows of the next job's tile (unless it is this tile for another channel group), fetched
             * into L2 during this GEMM: without it the depthwise step waited on DRAM whenever the input was not
             * in cache already, as in a network, where the previous layer has just written it */
            const char *pf = NULL, *pf_end = NULL;
            if (job + 1 < job_end && (job + 1) / groups != rest) {
                long next = (job + 1) / groups;
                int nn = (int)(next / tiles_per_image), q0 = (int)(next % tiles_per_image) * tile;
                int q1 = (P - q0 < tile ? P : q0 + tile) - 1;
                int lo = (q0 / Wo) * sh - ph, hi = (q1 / Wo) * sh - ph + (KH - 1) * dh;
                lo = lo < 0 ? 0 : lo;
                hi = hi >= H ? H - 1 : hi;
                if (lo <= hi) {
                    pf = (const char *)(x + ((size_t)nn * H + lo) * W * C);
                    pf_end = (const char *)(x + ((size_t)nn * H + hi + 1) * W * C);
                }
            }
            /* the flat path's 1x1 step (a few input channels, bound by its output's stores) keeps panel order:
             * rows outer it ran slower in some processes than in others (docs/design-notes.md) */
            pointwise_step(t, m, cp, C, wpw, bpw, Cout, j_begin, j_end, pw_act, y + ((size_t)n * P + p0) * Cout,
                           stream, pf, pf_end, wpat == NULL);
        }
        free(t);
        if (stream || mid) stream_fence(); /* the streamed stores are visible before the caller reads y */
    }
    free(wpat);
    return failed ? -1 : 0;
}

/* A depthwise weight as PyTorch stores it, [C][taps], into the layout the kernels read, [taps][C]. */
static void taps_by_channel(const float *wdw, int C, size_t taps, float *wt) {
    for (int c = 0; c < C; ++c)
        for (size_t k = 0; k < taps; ++k) wt[k * C + c] = wdw[(size_t)c * taps + k];
}

/* A training step's forward pass through sepconv_fused_dwpw_f32 (dilation 1, no activations, every job), the
 * weights as PyTorch stores them: wdw [C][KH][KW], wpw [Cout][C]. They change at every step, so this lays them out
 * as the kernel reads them (wdw to [KH][KW][C]; wpw into 32-column panels, on the threads) at each call, in C: done
 * by the caller, those were tensor operations and calls of their own around the kernel (design notes). Returns what
 * sepconv_fused_dwpw_f32 returns, or -1 if the weights' buffer could not be allocated. */
int sepconv_fused_forward_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                              int KW, int sh, int sw, int ph, int pw, const float *wpw, const float *bpw, int Cout,
                              float *y, float *mid, int Ho, int Wo, int tile, int groups, int stream, int threads) {
    if (C < 1 || Cout < 1 || KH < 1 || KW < 1 || tile < 1 || groups < 1) return -2;
    size_t taps = (size_t)KH * KW, panel_floats = (size_t)(Cout + NR - 1) / NR * C * NR;
    size_t taps_bytes = (taps * C * sizeof(float) + 63) / 64 * 64;
    float *buf = (float *)aligned_alloc(64, taps_bytes + panel_floats * sizeof(float));
    if (!buf) return -1;
    float *wt = buf, *panels = buf + taps_bytes / sizeof(float);
    taps_by_channel(wdw, C, taps, wt);
    sepconv_pack_panels_f32(wpw, 1, C, C, Cout, panels, threads); /* B[c][j] = wpw[j][c] */
    int code = sepconv_fused_dwpw_f32(x, N, H, W, C, wt, bdw, KH, KW, sh, sw, ph, pw, 1, 1, ACT_NONE, panels, bpw,
                                      Cout, ACT_NONE, y, mid, Ho, Wo, tile, groups, stream, 3, 0,
                                      sepconv_fused_jobs(N, Ho, Wo, tile, groups), threads);
    free(buf);
    return code;
}

/* A depthwise convolution on its own at stride 1 (sepconv's training engines: the forward pass and, with the
 * kernel flipped, the input gradient of a depthwise step with few channels):
 *   y[n][oh][ow][c] = bdw[c] + sum over (kh, kw) of x[n][oh - ph + kh dh][ow - pw + kw dw][c] wdw[kh][kw][c]
 * (zero outside the image); x: [N][H][W][C], wdw: [KH][KW][C], bdw: [C] or NULL, y: [N][Ho][Wo][C] with
 * Ho = H + 2 ph - (KH - 1) dh >= 1, Wo = W + 2 pw - (KW - 1) dw >= 1, 0 <= ph, pw. Vector builds take the flat path
 * whatever C (depthwise_flat_row: an output row as a 1D convolution over its Wo C floats; it pays where a vector of
 * channels would be mostly empty, and the caller decides where), the portable build the plain loop. Bands of
 * DEPTHWISE_BAND output rows are split statically among the threads. Returns 0, -1 if a buffer could not be
 * allocated, -2 for an empty output or a negative padding. */
#define DEPTHWISE_BAND 8
int sepconv_depthwise_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                          int KW, int ph, int pw, int dh, int dw, float *y, int threads) {
    int Ho = H + 2 * ph - (KH - 1) * dh, Wo = W + 2 * pw - (KW - 1) * dw;
    if (Ho < 1 || Wo < 1 || ph < 0 || pw < 0) return -2;
    (void)threads; /* used by the OpenMP pragma only */
    float *wpat = NULL, *bpat = NULL;
    size_t pad_bytes = 0;
#ifdef FLAT_ROW
    wpat = (float *)aligned_alloc(64, sizeof(float) * ((size_t)KH * KW * C * 16 + (size_t)C * 16));
    if (!wpat) return -1;
    bpat = wpat + (size_t)KH * KW * C * 16;
    flat_patterns(wdw, bdw, KH, KW, C, wpat, bpat);
    /* a band's input rows: its output rows and the kernel's extent */
    pad_bytes = round_up((size_t)(DEPTHWISE_BAND + (KH - 1) * dh) * flat_row_floats(W, C, pw) * sizeof(float),
                         FLAT_ALIGN);
#endif
    long bands = (Ho + DEPTHWISE_BAND - 1) / DEPTHWISE_BAND, jobs = (long)N * bands;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && jobs > 1)
#endif
    {
        float *padded = pad_bytes ? (float *)aligned_alloc(FLAT_ALIGN, pad_bytes) : NULL;
        if (pad_bytes && !padded) mark_failed(&failed);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long job = 0; job < jobs; ++job) {
            if (pad_bytes && !padded) continue;
            int n = (int)(job / bands), oh0 = (int)(job % bands) * DEPTHWISE_BAND;
            int rows = Ho - oh0 < DEPTHWISE_BAND ? Ho - oh0 : DEPTHWISE_BAND;
            /* row stride C: the output rows are y's own */
            depthwise_tile(x + (size_t)n * H * W * C, H, W, C, wdw, bdw, KH, KW, 1, 1, ph, pw, dh, dw, ACT_NONE, Wo,
                           oh0 * Wo, rows * Wo, y + ((size_t)n * Ho + oh0) * Wo * C, C, wpat, bpat, padded);
        }
        free(padded);
    }
    free(wpat);
    return failed ? -1 : 0;
}

/* o[0 : C] = sum over the NT taps of tap_w[t][c] * tap_g[t][c] (one gx pixel of depthwise_adjoint_rows) */
SEPCONV_INLINE void adjoint_pixel(float *o, int C, const float **tap_g, const float **tap_w, const int NT) {
    int c = 0;
    for (; c + VB <= C; c += VB) {
        vb s = vb_load(tap_w[0] + c) * vb_load(tap_g[0] + c);
        for (int t = 1; t < NT; ++t) s = vb_fma(vb_load(tap_w[t] + c), vb_load(tap_g[t] + c), s);
        vb_store(o + c, s);
    }
    for (; c < C; ++c) {
        float s = tap_w[0][c] * tap_g[0][c];
        for (int t = 1; t < NT; ++t) s += tap_w[t][c] * tap_g[t][c];
        o[c] = s;
    }
}

/* Consecutive gx pixels of one row per window of the strided adjoint: ADJ_Q of each of the sw column classes. With 32
 * vector registers 8 (at sw = 2, 16 accumulators, a window of 9-10 gm vectors and a weight), with 16 of them 4. */
#if defined(SEPCONV_AVX512) || (defined(VREGS) && VREGS >= 32)
#define ADJ_Q 8
#else
#define ADJ_Q 4
#endif

/* The gx pixels [iw0, iw0 + npix) of one row, iw0 + pw = q0 sw, a whole number of gm columns (npix <= ADJ_Q sw): the
 * strided adjoint as sw interleaved 1D correlations. Pixel iw0 + j sw + r (class r) takes the taps kw = d sw + r from
 * gm column q0 + j - d, so for each of the row's nk (gm row, kernel row) pairs the gm vectors of columns
 * [q0 - R, q0 + ADJ_Q) (R = (KW - 1) / sw) are loaded once into a window and each weight vector once, where the
 * gather (adjoint_pixel) loads a gm vector and a weight vector for every tap of every pixel. Window entries
 * outside [q_lo, q_hi) are columns outside gm, taken as zero (no tap there); KW and sw are constants after inlining.
 * Pixel iw0 + i is written at o + i ld. */
SEPCONV_INLINE void adjoint_window(const float *const *grow, const int *krow, int nk, const float *wdw, int KW,
                                   int sw, int C, int q0, int q_lo, int q_hi, int npix, float *o, long ld) {
    const int R = (KW - 1) / sw, NW = ADJ_Q + (KW - 1) / sw;
    int c = 0;
    for (; c + VB <= C; c += VB) {
        vb acc[ADJ_Q * 3] = {0}; /* sw <= 3 */
        for (int i = 0; i < nk; ++i) {
            const float *g = grow[i] + (ptrdiff_t)(q0 - R) * C + c, *wr = wdw + (size_t)krow[i] * KW * C + c;
            vb win[ADJ_Q + 3] = {0}; /* R <= 3: KW <= 7 */
#pragma GCC unroll 16
            for (int q = 0; q < NW; ++q)
                if (q >= q_lo && q < q_hi) win[q] = vb_load(g + (size_t)q * C);
#pragma GCC unroll 8
            for (int kw = 0; kw < KW; ++kw) {
                vb wv = vb_load(wr + (size_t)kw * C);
#pragma GCC unroll 8
                for (int j = 0; j < ADJ_Q; ++j)
                    acc[j * sw + kw % sw] = vb_fma(wv, win[j + R - kw / sw], acc[j * sw + kw % sw]);
            }
        }
#pragma GCC unroll 24
        for (int k = 0; k < ADJ_Q * sw; ++k)
            if (k < npix) vb_store(o + (size_t)k * ld + c, acc[k]);
    }
    for (; c < C; ++c) { /* the channels past the last whole vector */
        float acc[ADJ_Q * 3] = {0};
        for (int i = 0; i < nk; ++i) {
            const float *g = grow[i] + (ptrdiff_t)(q0 - R) * C + c, *wr = wdw + (size_t)krow[i] * KW * C + c;
            for (int kw = 0; kw < KW; ++kw)
                for (int j = 0; j < ADJ_Q; ++j) {
                    int q = j + R - kw / sw;
                    if (q >= q_lo && q < q_hi) acc[j * sw + kw % sw] += wr[(size_t)kw * C] * g[(size_t)q * C];
                }
        }
        for (int k = 0; k < ADJ_Q * sw && k < npix; ++k) o[(size_t)k * ld + c] = acc[k];
    }
}

/* adjoint_window with constant KW and sw, for the layers that take it (adjoint_window_applies); a whole window
 * (every column inside gm, ADJ_Q sw pixels) with constant bounds, so its loops have no checks */
static void adjoint_window_any(const float *const *grow, const int *krow, int nk, const float *wdw, int KW, int sw,
                               int C, int q0, int q_lo, int q_hi, int npix, float *o, long ld) {
    const int whole = q_lo == 0 && q_hi == ADJ_Q + (KW - 1) / sw && npix == ADJ_Q * sw;
    if (KW == 3 && whole) adjoint_window(grow, krow, nk, wdw, 3, 2, C, q0, 0, ADJ_Q + 1, ADJ_Q * 2, o, ld);
    else if (KW == 3) adjoint_window(grow, krow, nk, wdw, 3, 2, C, q0, q_lo, q_hi, npix, o, ld);
    else if (whole) adjoint_window(grow, krow, nk, wdw, 5, 2, C, q0, 0, ADJ_Q + 2, ADJ_Q * 2, o, ld);
    else adjoint_window(grow, krow, nk, wdw, 5, 2, C, q0, q_lo, q_hi, npix, o, ld);
}

/* Whether the strided adjoint takes adjoint_window: column stride 2, kernel width 3 or 5 (MobileNet's and
 * EfficientNet's downsampling layers) */
static inline int adjoint_window_applies(int KW, int sw) { return sw == 2 && (KW == 3 || KW == 5); }

/* gx rows [a, e) of one image (W pixels each, ld floats apart, written from gx) of a depthwise step of stride (sh, sw):
 * the adjoint,
 *   gx[ih][iw][c] = sum over the taps (kh, kw) with ih + ph - kh = oh * sh, iw + pw - kw = ow * sw, 0 <= ow < Wo,
 *                   lo <= oh < hi, of wdw[kh][kw][c] * gm[oh][ow][c]
 * (zero where no tap lands), from gm rows [lo, hi) held from gm[0]. A gather: each gx pixel's taps (1-4 of a 3x3
 * kernel at stride 2) are summed in registers, a block of VB channels at a time, and the pixel written once; where
 * adjoint_window_applies, a row's pixels from the first of class 0 on go through adjoint_window instead, ADJ_Q sw
 * at a time. tap_g, tap_w: room for KH * KW pointers. */
static void depthwise_adjoint_rows(const float *gm, int lo, int hi, int Wo, int C, const float *wdw, int KH, int KW,
                                   int sh, int sw, int ph, int pw, int a, int e, int W, float *gx, long ld,
                                   const float **tap_g, const float **tap_w) {
    int windows = adjoint_window_applies(KW, sw);
    for (int ih = a; ih < e; ++ih) {
        /* the kernel rows that reach this row and their gm rows: looked up once per row (divisions are slow) */
        const float *grow[16];
        int krow[16], nk = 0;
        for (int kh = (ih + ph) % sh; kh < KH && kh <= ih + ph; kh += sh) {
            int oh = (ih + ph - kh) / sh;
            if (oh >= lo && oh < hi) {
                grow[nk] = gm + (size_t)(oh - lo) * Wo * C;
                krow[nk++] = kh;
            }
        }
        /* iw + pw = q * sw + r, stepped along the row */
        int q = pw / sw, r = pw % sw;
        for (int iw = 0; iw < W; ++iw) {
            if (windows && r == 0) { /* from here the row's pixels ADJ_Q * sw at a time (the last window shorter) */
                int npix = W - iw < ADJ_Q * sw ? W - iw : ADJ_Q * sw, R = (KW - 1) / sw, NW = ADJ_Q + R;
                int q_lo = R - q > 0 ? R - q : 0, q_hi = Wo - (q - R) < NW ? Wo - (q - R) : NW;
                adjoint_window_any(grow, krow, nk, wdw, KW, sw, C, q, q_lo, q_hi, npix,
                                   gx + ((size_t)(ih - a) * W + iw) * ld, ld);
                iw += npix - 1;
                q += npix / sw; /* r stays 0 until the row's end */
                continue;
            }
            int nt = 0;
            for (int i = 0; i < nk; ++i)
                for (int kw = r, ow = q; kw < KW && ow >= 0; kw += sw, --ow) /* iw + pw - kw = ow * sw */
                    if (ow < Wo) {
                        tap_g[nt] = grow[i] + (size_t)ow * C;
                        tap_w[nt++] = wdw + ((size_t)krow[i] * KW + kw) * C;
                    }
            float *o = gx + ((size_t)(ih - a) * W + iw) * ld;
            switch (nt) { /* a constant tap count: the taps' pointers stay in registers */
            case 0: memset(o, 0, sizeof(float) * C); break;
            case 1: adjoint_pixel(o, C, tap_g, tap_w, 1); break;
            case 2: adjoint_pixel(o, C, tap_g, tap_w, 2); break;
            case 3: adjoint_pixel(o, C, tap_g, tap_w, 3); break;
            case 4: adjoint_pixel(o, C, tap_g, tap_w, 4); break;
            default: adjoint_pixel(o, C, tap_g, tap_w, nt);
            }
            if (++r == sw) {
                r = 0;
                ++q;
            }
        }
    }
}

/* gm[i][0 : C] = sum over j of gy[i][j] wt[c][j] for rows i in [0, m) (gy's rows Cout floats apart, gm's C): the
 * 1x1 step's input gradient for few channels, vectorized along Cout with one horizontal sum per output. The panel
 * GEMM (pointwise_tile) would spend a broadcast and an FMA on every (row, j) for C useful lanes of its 32. */
static void few_channel_rows(const float *gy, int m, int Cout, const float *wt, int C, float *gm) {
    for (int i = 0; i < m; ++i) {
        const float *g = gy + (size_t)i * Cout;
        for (int c = 0; c < C; ++c) {
            const float *w = wt + (size_t)c * Cout;
            vb acc = {0};
            int j = 0;
            for (; j + VB <= Cout; j += VB) acc = vb_fma(vb_load(g + j), vb_load(w + j), acc);
            if (j < Cout) acc = vb_fma(vb_load_n(g + j, Cout - j), vb_load_n(w + j, Cout - j), acc);
            gm[(size_t)i * C + c] = vb_hsum(acc);
        }
    }
}

/* ceil(a / b) for b > 0 and any a (C's division truncates toward zero) */
static inline int ceil_div(int a, int b) { return a > 0 ? (a + b - 1) / b : -((-a) / b); }

/* Backward pass of a depthwise -> 1x1 pair (stride sh x sw, dilation 1, one filter per channel, zero padding
 * ph <= KH - 1 and pw <= KW - 1), float32, channels-last, for the layer's output gradient gy:
 *
 *   gm = gy @ wpw                              the 1x1 step's input gradient, [N][Ho][Wo][C]
 *   gx = the depthwise step's adjoint on gm    [N][H][W][C]; at stride 1 a depthwise convolution of gm with wdw
 *                                              flipped in space, padding KH - 1 - ph, KW - 1 - pw
 *   gwdw[c][kh][kw] = sum over n, oh, ow of gm[n][oh][ow][c] * x[n][oh * sh - ph + kh][ow * sw - pw + kw][c]
 *   gbdw[c] = sum of gm[..][c]                 (when gbdw != NULL)
 *   gwpw[j][c] = sum of gy[..][j] * mid[..][c]  the 1x1 weight gradient (when gwpw != NULL; mid: the depthwise
 *                                              step's output, [N][Ho][Wo][C], or NULL: recomputed from x, wdw
 *                                              and bdw, the depthwise bias or NULL, a band of rows at a time)
 *
 * x: [N][H][W][C]; wdw: [C][KH][KW] and gwdw likewise, and wpw: [Cout][C] (the weights as PyTorch stores them); gy:
 * [N][Ho][Wo][Cout] with Ho = (H + 2 ph - KH) / sh + 1, Wo likewise; gx (NULL: not computed, as for a network's first
 * layer, whose input needs no gradient), gwdw, gbdw, gwpw are overwritten. stream != 0: at stride 1, gx is written
 * with non-temporal stores where its rows allow (store_rows), which saves reading its lines in before they are
 * overwritten; for a gx too large to stay in cache until the layer below reads it (the caller decides).
 * gm is never stored whole: each work unit sweeps the rows of its image (or of its part of an image) a band of `band`
 * gx rows at a time (band < 1: sized so that the band's gm rows fit in about 128 KiB), computing the gm rows the band
 * needs into a buffer that keeps the ones the next band reads too, and runs the depthwise input gradient (stride 1:
 * the forward kernel's depthwise step with the flipped kernel; else depthwise_adjoint_rows) and weight gradient on
 * them there, and the 1x1 weight gradient on the band's gy rows, still in cache from the GEMM. Against the unfused
 * steps (the 1x1 input gradient written out, then read by both depthwise gradients; gy read again for the 1x1 weight
 * gradient) this saves writing gm once and reading it twice, and reading gy once; recomputing mid from the x rows the
 * weight gradient reads anyway saves the forward pass writing it and this pass reading it.
 * The work units, dealt statically to `threads` threads: with groups == 1, (image, segment of its rows), an image
 * being split into `threads` segments only where the images cannot be dealt evenly; the gm rows both sides of a split
 * read are computed by both (each row's weight-gradient term is added by one), and each thread reads all of wpw.
 * With groups > 1, (image, group of channels): every step above is per channel but gm's GEMM, which reads all of gy
 * and the group's columns of wpw, so `groups` groups of whole 32-column panels of C split the work with no rows
 * computed twice and each thread reading its share of wpw (the channel split of sepconv_fused_dwpw_f32 and
 * sepconv_gemm_f32; for few pixels and a large weight, the caller decides). A unit then gathers its channels of the
 * image's x and of wdw into buffers of its own first.
 * The threads' weight-gradient sums are added in thread order: the result does not depend on timing. Returns 0, -1
 * if a buffer could not be allocated, -2 for sizes, strides or padding outside the above, KH > 16, groups < 1. */
int sepconv_dwpw_backward_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                              int KW, int sh, int sw, int ph, int pw, const float *gy, int Cout, const float *wpw,
                              const float *mid, float *gx, float *gwdw, float *gbdw, float *gwpw, int band,
                              int groups, int stream, int threads) {
    if (N < 1 || H < 1 || W < 1 || C < 1 || Cout < 1 || KH < 1 || KW < 1 || KH > 16 || sh < 1 || sw < 1 || ph < 0
        || pw < 0 || ph > KH - 1 || pw > KW - 1 || H + 2 * ph < KH || W + 2 * pw < KW || groups < 1)
        return -2;
    int Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
    int unit = sh == 1 && sw == 1; /* the adjoint is a depthwise convolution, run by the forward kernel's code */
    if (threads < 1) threads = 1;
    int panels = (C + NR - 1) / NR;
    if (groups > panels) groups = panels;
    int per_group = (panels + groups - 1) / groups;
    int Cg = groups > 1 ? per_group * NR : C; /* the most channels of a unit */
    if (Cg > C) Cg = C;
    int cp = (Cg + 15) / 16 * 16 + 16; /* the gx tile's row stride, as in the forward kernel */
    int Cw = (C + 15) / 16 * 16;       /* the weight-gradient sums' row stride */
    /* Few channels (a network's first layer: grey or RGB images): gm's GEMM as dot products along Cout
     * (few_channel_rows), and the 1x1 weight gradient summed transposed, [C][Cout], its register blocks then
     * vectorized along Cout (matmul_at_b's rule) */
    int few = C <= FEW_CHANNELS && Cout >= VB, tr = C < 16 && Cout >= 16;
    int Ow = (Cout + 15) / 16 * 16; /* the transposed sums' row stride */
    /* one thread's sums: KH * KW taps, the depthwise bias (rows of Cw floats), then the 1x1 weight (Cout rows of Cw
     * floats, or transposed C rows of Ow) */
    size_t taps = (size_t)KH * KW, pw_sums = tr ? (size_t)C * Ow : (size_t)Cout * Cw;
    size_t per = taps * Cw + Cw + (gwpw ? pw_sums : 0);
    if (band < 1) {
        long row_floats = (long)Wo * (C > Cout ? C : Cout);
        band = (int)(32768 / row_floats) * sh - (KH - 1); /* a band of gx rows reads about band / sh gm rows */
        if (band < 1) band = 1;
    }
    if (band > H) band = H;
    /* work units: (image, segment of its rows) or (image, channel group); an image is split into segments only where
     * the images cannot be dealt evenly */
    int segs = (groups == 1 && threads > 1 && N % threads) ? threads : 1;
    if (segs > H) segs = H;
    long units = (long)N * segs * groups;
    float *b = (float *)aligned_alloc(64, ((size_t)panels * Cout * NR * sizeof(float) + 63) / 64 * 64);
    /* the depthwise weight as the kernels' steps read it, [KH][KW][C], and at stride 1 flipped in space too */
    float *wt = (float *)malloc(sizeof(float) * taps * C * (unit ? 2 : 1)), *wflip = unit && wt ? wt + taps * C : NULL;
    float *sums = (float *)aligned_alloc(64, ((size_t)threads * per * sizeof(float) + 63) / 64 * 64);
    if (!b || !wt || !sums) {
        free(b); free(wt); free(sums);
        return -1;
    }
    taps_by_channel(wdw, C, taps, wt);
    for (int kh = 0; unit && kh < KH; ++kh)
        for (int kw = 0; kw < KW; ++kw)
            memcpy(wflip + ((size_t)kh * KW + kw) * C, wt + ((size_t)(KH - 1 - kh) * KW + (KW - 1 - kw)) * C,
                   sizeof(float) * C);
    int failed = 0;
    (void)threads; /* used by the OpenMP pragma only */
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        float *part = sums + (size_t)tid * per, *bpart = part + taps * Cw, *wpart = bpart + Cw;
        memset(part, 0, per * sizeof(float)); /* each thread its own sums (the memory is touched first here) */
        /* the ring holds the gm rows of a band (Cg channels each), after Cw floats of room when the channels are
         * grouped: the GEMM writes a group's columns [c0, c1) from ring - c0 */
        size_t lead = groups > 1 ? (size_t)Cw : 0;
        size_t ring_bytes = ((lead + (size_t)(band + KH - 1) * Wo * Cg) * sizeof(float) + 63) / 64 * 64;
        size_t t_bytes = unit && gx ? (size_t)band * W * cp * sizeof(float) : 0;
        /* mid's rows recomputed for a band's 1x1 weight gradient: no more than the ring's rows, at the tile's stride */
        size_t mt_bytes = gwpw && !mid ? (size_t)(band + KH - 1) * Wo * cp * sizeof(float) : 0;
        /* a channel group's x (one image) and depthwise weights (wt, then wflip) */
        size_t xg_bytes = groups > 1 ? ((size_t)H * W * Cg * sizeof(float) + 63) / 64 * 64 : 0;
        size_t wg_bytes = groups > 1 ? taps * Cg * (unit ? 2 : 1) * sizeof(float) : 0;
        char *mem = (char *)aligned_alloc(64, (ring_bytes + t_bytes + mt_bytes + xg_bytes + wg_bytes + 63) / 64 * 64);
        float *ring = mem ? (float *)mem + lead : NULL;
        float *t = mem && t_bytes ? (float *)(mem + ring_bytes) : NULL;
        float *mt = mem && mt_bytes ? (float *)(mem + ring_bytes + t_bytes) : NULL;
        float *xg = mem && xg_bytes ? (float *)(mem + ring_bytes + t_bytes + mt_bytes) : NULL;
        float *wg = mem && wg_bytes ? (float *)(mem + ring_bytes + t_bytes + mt_bytes + xg_bytes) : NULL;
        const float **taps_g = (const float **)malloc(sizeof(float *) * 2 * taps), **taps_w = taps_g + taps;
        if (!mem || !taps_g) {
            ring = NULL;
            mark_failed(&failed);
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int q = 0; q < panels; ++q) {
            if (!few) {
                pack_panel(wpw, C, 1, Cout, C, q, b + (size_t)q * Cout * NR);
                continue;
            }
            for (int c = 0; c < C; ++c) /* few channels: wpw transposed, [C][Cout] (one panel's room) */
                for (int j = 0; j < Cout; ++j) b[(size_t)c * Cout + j] = wpw[(size_t)j * C + c];
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long u = 0; u < units; ++u) {
            if (!ring) continue;
            int n = (int)(u / (segs * groups)), s = (int)(u % segs), grp = (int)(u / segs % groups);
            int c0 = grp * per_group * NR, c1 = c0 + per_group * NR < C ? c0 + per_group * NR : C;
            if (c0 >= c1) continue;
            int Cc = c1 - c0; /* the unit's channels [c0, c1) */
            int r0 = (int)((long)H * s / segs), r1 = (int)((long)H * (s + 1) / segs);
            const float *xn = x + (size_t)n * H * W * C, *gyn = gy + (size_t)n * Ho * Wo * Cout;
            /* the unit's x, depthwise weights and bias: the tensors' own with all channels, else gathered */
            const float *xu = xn, *wtu = wt, *wflipu = wflip, *bdwu = bdw ? bdw + c0 : NULL;
            if (groups > 1) {
                for (long p = 0; p < (long)H * W; ++p)
                    memcpy(xg + (size_t)p * Cc, xn + (size_t)p * C + c0, sizeof(float) * Cc);
                for (size_t k = 0; k < taps; ++k) {
                    memcpy(wg + k * Cc, wt + k * C + c0, sizeof(float) * Cc);
                    if (unit) memcpy(wg + (taps + k) * Cc, wflip + k * C + c0, sizeof(float) * Cc);
                }
                xu = xg;
                wtu = wg;
                wflipu = unit ? wg + taps * Cc : NULL;
            }
            long atb_blocks = (long)((Cout + 11) / 12) * ((Cc + 31) / 32); /* sepconv_atb_range's register blocks */
            /* the gm rows whose weight-gradient term this unit adds: consecutive units' ranges tile [0, Ho), and
             * each lies within the rows the unit computes (the first its first band reads, up to the last its last
             * band reads) */
            int own_lo = r0 == 0 ? 0 : ceil_div(r0 + ph - KH + 1, sh), own_hi = r1 == H ? Ho : ceil_div(r1 + ph - KH + 1, sh);
            own_lo = own_lo < 0 ? 0 : own_lo > Ho ? Ho : own_lo;
            own_hi = own_hi < 0 ? 0 : own_hi > Ho ? Ho : own_hi;
            int win_lo = 0, win_hi = 0; /* the gm rows held in ring[0 ..) */
            for (int a = r0; a < r1; a += band) {
                int e = r1 - a < band ? r1 : a + band;
                int lo = ceil_div(a + ph - KH + 1, sh), hi = (e - 1 + ph) / sh + 1; /* the gm rows gx rows [a, e) read */
                lo = lo < 0 ? 0 : lo;
                hi = hi > Ho ? Ho : hi;
                int fresh = lo;
                if (win_hi > lo && win_lo <= lo) { /* keep the rows the previous band computed */
                    memmove(ring, ring + (size_t)(lo - win_lo) * Wo * Cc, sizeof(float) * (size_t)(win_hi - lo) * Wo * Cc);
                    fresh = win_hi;
                }
                if (fresh < hi) {
                    float *g = ring + (size_t)(fresh - lo) * Wo * Cc;
                    int w0 = fresh > own_lo ? fresh : own_lo, w1 = hi < own_hi ? hi : own_hi;
                    /* the input rows the weight gradient of rows [w0, w1) reads, fetched into L2 during the GEMM
                     * (as the forward kernel fetches its next tile's input; a channel group's were just gathered) */
                    const char *pf = NULL, *pf_end = NULL;
                    int x_lo = w0 * sh - ph, x_hi = (w1 - 1) * sh - ph + KH - 1;
                    x_lo = x_lo < 0 ? 0 : x_lo;
                    x_hi = x_hi >= H ? H - 1 : x_hi;
                    if (groups == 1 && w0 < w1 && x_lo <= x_hi) {
                        pf = (const char *)(xn + (size_t)x_lo * W * C);
                        pf_end = (const char *)(xn + (size_t)(x_hi + 1) * W * C);
                    }
                    if (few)
                        few_channel_rows(gyn + (size_t)fresh * Wo * Cout, (hi - fresh) * Wo, Cout, b, C, g);
                    else
                        pointwise_step(gyn + (size_t)fresh * Wo * Cout, (hi - fresh) * Wo, Cout, Cout, b, NULL, Cc, c0,
                                       c1, ACT_NONE, g - c0, 0, pf, pf_end, 0); /* rows outer was slower here */
                    for (int oh = w0; oh < w1; ++oh) {
                        const float *go = ring + (size_t)(oh - lo) * Wo * Cc;
                        sepconv_wgrad_row(xu, H, W, Cc, go, Wo, KH, KW, sh, sw, ph, pw, 1, 1, oh, Cw, part + c0, NULL);
                        if (gbdw)
                            for (int ow = 0; ow < Wo; ++ow)
                                for (int c = 0; c < Cc; ++c) bpart[c0 + c] += go[(size_t)ow * Cc + c];
                    }
                    if (gwpw && w0 < w1) {
                        long rows = (long)(w1 - w0) * Wo;
                        const float *m = mid ? mid + ((size_t)n * Ho + w0) * Wo * C + c0 : mt;
                        if (!mid) /* the forward kernel's depthwise step, on the x rows the weight gradient read */
                            depthwise_tile(xu, H, W, Cc, wtu, bdwu, KH, KW, sh, sw, ph, pw, 1, 1, ACT_NONE, Wo, w0 * Wo,
                                           (int)rows, mt, cp, NULL, NULL, NULL);
                        if (tr)
                            sepconv_atb_range(m, mid ? C : cp, gyn + (size_t)w0 * Wo * Cout, Cout, wpart, Ow, C, Cout,
                                              0, rows, rows, 0, (long)((C + 11) / 12) * ((Cout + 31) / 32), 0);
                        else
                            sepconv_atb_range(gyn + (size_t)w0 * Wo * Cout, Cout, m, mid ? C : cp, wpart + c0, Cw, Cout,
                                              Cc, 0, rows, rows, 0, atb_blocks, 0);
                    }
                }
                win_lo = lo;
                win_hi = hi;
                /* gx rows [a, e) from gm rows [lo, hi), held from ring[0]. Stride 1: the flipped depthwise
                 * convolution (the padding shifted by lo) through the forward kernel's depthwise step into t, then
                 * copied out */
                if (!gx) continue;
                float *out = gx + ((size_t)n * H + a) * W * C + c0;
                if (!unit) {
                    depthwise_adjoint_rows(ring, lo, hi, Wo, Cc, wtu, KH, KW, sh, sw, ph, pw, a, e, W, out, C, taps_g,
                                           taps_w);
                    continue;
                }
                int m = (e - a) * W;
                depthwise_tile(ring, hi - lo, Wo, Cc, wflipu, NULL, KH, KW, 1, 1, KH - 1 - ph + lo, KW - 1 - pw, 1, 1,
                               ACT_NONE, W, a * W, m, t, cp, NULL, NULL, NULL);
                if (stream)
                    store_rows(out, C, t, m, Cc, cp);
                else
                    for (int i = 0; i < m; ++i) memcpy(out + (size_t)i * C, t + (size_t)i * cp, sizeof(float) * Cc);
            }
        }
        free(mem);
        free(taps_g);
        if (stream) stream_fence(); /* the streamed stores are visible before the caller reads gx */
        /* the threads' sums added in thread order, the rows (taps, bias, 1x1 weight rows) shared among them; a
         * tap's row goes to gwdw's column of that tap */
        long rows = (long)taps + 1 + (gwpw ? Cout : 0);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
        for (long r = 0; r < rows; ++r) {
            float *dst = r < (long)taps ? gwdw + r : r == (long)taps ? gbdw : gwpw + (r - (long)taps - 1) * C;
            size_t step = r < (long)taps ? taps : 1;
            /* where row r's element c is in a thread's sums: rows of Cw floats, or the 1x1 weight's transposed */
            size_t at = (size_t)r * Cw, stride = 1;
            if (tr && r > (long)taps) {
                at = (taps + 1) * Cw + (size_t)(r - (long)taps - 1);
                stride = (size_t)Ow;
            }
            if (failed || !dst) continue;
            for (int c = 0; c < C; ++c) {
                float s = 0.f;
                for (int i = 0; i < nt; ++i) s += sums[(size_t)i * per + at + c * stride];
                dst[c * step] = s;
            }
        }
    }
    free(b);
    free(wt);
    free(sums);
    return failed ? -1 : 0;
}
