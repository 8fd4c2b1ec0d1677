/* The vector instruction set sepconv's kernels use, chosen at compile time from what the target has, and a small
 * vector abstraction for the portable-SIMD paths (AVX2 + FMA and ARM NEON).
 *
 *   SEPCONV_AVX512  AVX-512F: the kernels' own AVX-512 intrinsics (16 floats, masked loads and stores).
 *   SEPCONV_VEC     AVX2 + FMA (8 floats) or AArch64 NEON (4 floats): the paths written against `vf` below.
 *   neither         portable C loops (the compiler may still vectorize them).
 *
 * -DSEPCONV_SCALAR forces the portable loops on any target (to test them, or compare against them).
 * In the `vf` paths a block of channels that is not a whole vector is loaded and stored through a small buffer
 * (vload_n / vstore_n), so no lane outside [0, n) is read or written.
 */
#ifndef SEPCONV_SIMD_H
#define SEPCONV_SIMD_H

#include <string.h>

#if defined(SEPCONV_SCALAR)
#define SEPCONV_ISA_NAME "scalar"
#elif defined(__AVX512F__)
#define SEPCONV_AVX512 1
#define SEPCONV_ISA_NAME "avx512"
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define SEPCONV_VEC 1
#define SEPCONV_VEC_AVX2 1
#define SEPCONV_ISA_NAME "avx2"
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define SEPCONV_VEC 1
#define SEPCONV_VEC_NEON 1
#define SEPCONV_ISA_NAME "neon"
#include <arm_neon.h>
#else
#define SEPCONV_ISA_NAME "scalar"
#endif

#define SEPCONV_INLINE static inline __attribute__((always_inline))

/* Empty asm statements that hide a value from the optimizer; they emit no instruction. OPAQUE_POINTER(p): the
 * windows of the 3x3 row functions (depthwise3_rows, vdw3_rows, wgrad3_row) step one pointer by a runtime stride,
 * where GCC otherwise precomputes base + q * C for every q of a window (ten pointers per input row), spills them,
 * and spends as many instructions on addresses as on FMAs. IN_REGISTER(v): a loaded vector that feeds several FMAs
 * stays one load into a register, where GCC otherwise folds the load into each FMA (one load per use). */
#define OPAQUE_POINTER(p) __asm__("" : "+r"(p))
#if defined(SEPCONV_VEC_NEON)
#define IN_REGISTER(v) __asm__("" : "+w"(v))
#else
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#endif

/* The geometry of the 3x3 row functions' windows (stride 1: a block of `block` output pixels reads block + 2 input
 * columns). interior_blocks: how many consecutive blocks, from input column iw0 >= 0, fit in `pixels` pixels with
 * their windows inside a row of W input columns (at least 1 where the first block fits). window_blocks: the blocks
 * of a segment of npix output pixels whose first window starts at input column iw0 (< 0 in the left padding):
 * *nb in all; [0, *ka) start left of the row, [*ka, *kb) lie inside it with `block` pixels each (the ones that
 * need no checks), [*kb, *nb) reach past the row's end or the segment's. */
SEPCONV_INLINE int interior_blocks(int pixels, int iw0, int W, int block) {
    int fit = (W - 2 - iw0) / block, n = pixels / block;
    return n < fit ? n : fit;
}
SEPCONV_INLINE void window_blocks(int iw0, int npix, int W, int block, int *ka, int *kb, int *nb) {
    *nb = (npix + block - 1) / block;
    *ka = iw0 < 0 ? (-iw0 + block - 1) / block : 0;
    *ka = *ka < *nb ? *ka : *nb;
    *kb = *ka < *nb ? *ka + interior_blocks(npix - *ka * block, iw0 + *ka * block, W, block) : *nb;
    *kb = *kb < *ka ? *ka : *kb;
}

#if defined(SEPCONV_VEC_AVX2)
typedef __m256 vf;
#define VW 8      /* floats per vector */
#define VREGS 16  /* vector registers: sizes the register blocks */
SEPCONV_INLINE vf vzero(void) { return _mm256_setzero_ps(); }
SEPCONV_INLINE vf vset1(float a) { return _mm256_set1_ps(a); }
SEPCONV_INLINE vf vload(const float *p) { return _mm256_loadu_ps(p); }
SEPCONV_INLINE void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
SEPCONV_INLINE vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); } /* a * b + c */
SEPCONV_INLINE vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
SEPCONV_INLINE vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
SEPCONV_INLINE vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
SEPCONV_INLINE vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
/* a store around the caches (p 32-byte aligned), and the fence that orders such stores before later reads */
SEPCONV_INLINE void vstream(float *p, vf v) { _mm256_stream_ps(p, v); }
SEPCONV_INLINE void vstream_fence(void) { _mm_sfence(); }
#elif defined(SEPCONV_VEC_NEON)
typedef float32x4_t vf;
#define VW 4
#define VREGS 32
SEPCONV_INLINE vf vzero(void) { return vdupq_n_f32(0.f); }
SEPCONV_INLINE vf vset1(float a) { return vdupq_n_f32(a); }
SEPCONV_INLINE vf vload(const float *p) { return vld1q_f32(p); }
SEPCONV_INLINE void vstore(float *p, vf v) { vst1q_f32(p, v); }
SEPCONV_INLINE vf vfma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
SEPCONV_INLINE vf vadd(vf a, vf b) { return vaddq_f32(a, b); }
SEPCONV_INLINE vf vmul(vf a, vf b) { return vmulq_f32(a, b); }
SEPCONV_INLINE vf vmax(vf a, vf b) { return vmaxq_f32(a, b); }
SEPCONV_INLINE vf vmin(vf a, vf b) { return vminq_f32(a, b); }
/* NEON has no non-temporal store for a vector register: plain stores */
SEPCONV_INLINE void vstream(float *p, vf v) { vst1q_f32(p, v); }
SEPCONV_INLINE void vstream_fence(void) {}
#endif

#ifdef SEPCONV_VEC
/* lanes [0, n) from p, the others zero (n <= VW; none for n <= 0). AVX2: a masked load (vmaskmovps: the masked-off
 * lanes are not read and fault on nothing). NEON has none: through a buffer, a store, a copy and a reload whose
 * store forwarding fails, which costs several times a whole load (docs/design-notes.md); kernels keep partial
 * loads out of NEON's inner loops. */
SEPCONV_INLINE vf vload_n(const float *p, int n) {
    if (n >= VW) return vload(p);
#if defined(SEPCONV_VEC_AVX2)
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
#else
    float buf[VW] = {0.f};
    memcpy(buf, p, sizeof(float) * (size_t)(n > 0 ? n : 0));
    return vload(buf);
#endif
}
/* lanes [0, n) to p; nothing past them is written (through a buffer: AMD's masked stores are slow, and the kernels
 * store a partial vector once per block, not per tap) */
SEPCONV_INLINE void vstore_n(float *p, vf v, int n) {
    if (n >= VW) { vstore(p, v); return; }
    float buf[VW];
    vstore(buf, v);
    for (int i = 0; i < n; ++i) p[i] = buf[i]; /* a loop: GCC warned that a memcpy here overread buf */
}
/* act 0: none, 1: ReLU, 2: ReLU6 */
SEPCONV_INLINE vf vact(vf v, int act) {
    if (act == 0) return v;
    v = vmax(v, vzero());
    if (act == 2) v = vmin(v, vset1(6.f));
    return v;
}
#endif

/* A block of VB floats as a GCC vector, on every target (AVX-512: one register; AVX2, NEON: one `vf`; otherwise
 * lowered to what the target has): for the few loops written once for all ISAs. Unaligned access through vb_load /
 * vb_store (memcpy, compiled to one vector load or store). */
#if defined(SEPCONV_AVX512)
#define VB 16
#elif defined(SEPCONV_VEC)
#define VB VW
#else
#define VB 4
#endif
typedef float vb __attribute__((vector_size(VB * sizeof(float))));
SEPCONV_INLINE vb vb_load(const float *p) {
    vb v;
    memcpy(&v, p, sizeof v);
    return v;
}
SEPCONV_INLINE void vb_store(float *p, vb v) { memcpy(p, &v, sizeof v); }
/* lanes [0, n) from p, the others zero (0 <= n <= VB): nothing past p + n is read */
SEPCONV_INLINE vb vb_load_n(const float *p, int n) {
#if defined(SEPCONV_AVX512)
    return (vb)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#elif defined(SEPCONV_VEC)
    return (vb)vload_n(p, n);
#else
    vb v = {0};
    memcpy(&v, p, sizeof(float) * (size_t)n);
    return v;
#endif
}
/* a * b + c, one fused multiply-add where the target has it: the kernels are built as ISO C (-std=c11), in which
 * GCC does not contract a * b + c written with vector operators into an FMA */
SEPCONV_INLINE vb vb_fma(vb a, vb b, vb c) {
#if defined(SEPCONV_AVX512)
    return (vb)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(SEPCONV_VEC)
    return (vb)vfma((vf)a, (vf)b, (vf)c);
#else
    return a * b + c;
#endif
}
/* the sum of v's lanes */
SEPCONV_INLINE float vb_hsum(vb v) {
#if defined(SEPCONV_AVX512)
    return _mm512_reduce_add_ps((__m512)v);
#elif defined(SEPCONV_VEC_AVX2)
    __m128 q = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
#elif defined(SEPCONV_VEC_NEON)
    return vaddvq_f32((vf)v);
#else
    float s = 0.f;
    for (int i = 0; i < VB; ++i) s += v[i];
    return s;
#endif
}

#endif
