/* The fused kernel's 1x1 step (its register-blocked GEMM) alone, in C, against a loop of nothing but FMAs.
 *
 *     cc -O3 -march=native -std=c11 benchmarks/fused_gemm_harness.c -o /tmp/fused_gemm_harness
 *     /tmp/fused_gemm_harness [Cout] [tile]            # default 64 output channels, a 222-pixel tile
 *
 * For 32, 64, 128 and 256 input channels it runs pointwise_step, the forward kernel's 1x1 step (pointwise_tile,
 * or pointwise_rows_outer for its whole blocks where the weight is small; src/sepconv/backends/native/csrc/
 * fused_dwpw.c, included here) over 12432 pixels, one tile of the depthwise output (in cache) at a time, the
 * output either rewritten in place (warm) or written through a 3-12 MB buffer; best of 7, GFLOP/s. The FMA loop (independent
 * accumulators in the build's vectors: 24 AVX-512, 12 AVX2, 28 NEON) is the core's peak for this kind of code.
 * Build with -mavx2 -mfma -mno-avx512f to time the AVX2 path; benchmarks/bench_gemm_harness.py builds and runs
 * several variants alternately. It shows whether the compiler keeps the register block's accumulators in
 * registers (a spill of them is described in benchmarks/README.md, "Zero padding"). One thread.
 * It compiles its own copy of the step: GCC's register allocation can differ in the library, where the step is
 * shared by several entry points (docs/design-notes.md), so a change is confirmed through the library's entry
 * points with benchmarks/bench_kernel_ab.py.
 */
#define _POSIX_C_SOURCE 200809L
#include "../src/sepconv/backends/native/csrc/fused_dwpw.c"
#include "../src/sepconv/backends/native/csrc/depthwise_wgrad.c" /* the backward kernel's weight-gradient steps */
#include "../src/sepconv/backends/native/csrc/gemm_atb.c"
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
/* The FMA loop's vectors and independent accumulators: enough chains to cover the FMA latency, all in registers */
#ifdef SEPCONV_AVX512
typedef __m512 hv;
#define HW 16
#define HACC 24
#define HSET1 _mm512_set1_ps
#define HFMA _mm512_fmadd_ps
#else
typedef vf hv; /* simd.h's vector: AVX2 + FMA or NEON */
#define HW VW
#define HACC (VREGS - 4)
#define HSET1 vset1
#define HFMA vfma
#endif
static double fma_peak(void) {
    hv acc[HACC], b = HSET1(0.9999999f), c = HSET1(1e-9f);
    for (int i = 0; i < HACC; ++i) acc[i] = HSET1((float)i);
    long n = 20000000;
    double t = now();
    for (long k = 0; k < n; ++k) {
#pragma GCC unroll 24
        for (int i = 0; i < HACC; ++i) acc[i] = HFMA(acc[i], b, c);
    }
    t = now() - t;
    float lanes[HW], sink = 0;
    for (int i = 0; i < HACC; ++i) {
        memcpy(lanes, &acc[i], sizeof lanes);
        sink += lanes[0];
    }
    if (sink == 12345.f) printf("%f\n", sink); /* keeps the loop */
    return n * (double)HACC * HW * 2 / t / 1e9;
}
#endif

int main(int argc, char **argv) {
    int cout = argc > 1 ? atoi(argv[1]) : 64, tile = argc > 2 ? atoi(argv[2]) : 222;
    long pixels = 12432;
    if (cout < 1 || tile < 1) {
        fprintf(stderr, "usage: %s [Cout >= 1] [tile >= 1], got %d %d\n", argv[0], cout, tile);
        return 2;
    }
#if defined(SEPCONV_AVX512) || defined(SEPCONV_VEC)
    printf("%s kernel; FMA loop: %.1f GFLOP/s\n", SEPCONV_ISA_NAME, fma_peak());
#else
    printf("%s kernel (portable loops)\n", SEPCONV_ISA_NAME);
#endif
    for (int cin = 32; cin <= 256; cin *= 2) {
        int cp = (cin + 15) / 16 * 16 + 16, panels = (cout + NR - 1) / NR;
        float *t = aligned_alloc(64, sizeof(float) * (size_t)tile * cp);
        float *b = aligned_alloc(64, sizeof(float) * (size_t)panels * NR * cin);
        float *y = aligned_alloc(64, sizeof(float) * (size_t)pixels * cout + 64);
        if (!t || !b || !y) return 1;
        for (long i = 0; i < (long)tile * cp; ++i) t[i] = (float)(i % 7) * 0.1f;
        for (long i = 0; i < (long)panels * NR * cin; ++i) b[i] = (float)(i % 5) * 0.1f;
        memset(y, 0, sizeof(float) * (size_t)pixels * cout);
        for (int through = 0; through < 2; ++through) {
            double best = 1e9;
            long tiles = pixels / tile;
            for (int rep = 0; rep < 7; ++rep) {
                double t0 = now();
                for (long k = 0; k < tiles; ++k)
                    pointwise_step(t, tile, cp, cin, b, NULL, cout, 0, cout, ACT_NONE,
                                   through ? y + (size_t)k * tile * cout : y, 0, NULL, NULL, 1);
                double dt = now() - t0;
                if (dt < best) best = dt;
            }
            printf("%4d -> %d channels, %s: %.1f GFLOP/s\n", cin, cout, through ? "output written through" : "warm",
                   2.0 * tiles * tile * cin * cout / best / 1e9);
        }
        free(t);
        free(b);
        free(y);
    }
    return 0;
}
