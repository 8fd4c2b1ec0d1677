/* Where the host runs the two threads of a two-thread run, and what that does to one image shared by rows.
 *
 *     cc -O3 -march=native -std=gnu11 -fopenmp benchmarks/thread_placement.c -o /tmp/thread_placement -lm
 *     OMP_PROC_BIND=true /tmp/thread_placement [H W C Cout stride tile [calls]]   # default 28 28 256 512 2 98 300
 *     OMP_PROC_BIND=true /tmp/thread_placement hop                               # the hop alone, ns
 *
 * One sample, printed as one line of JSON:
 *
 * - "hop_ns": how long a cache line takes to go from one of the two OpenMP threads to the other and back, halved
 *   (a flag passed back and forth HOPS times, the least of TRIALS such runs: a thread of another process that
 *   still spins on one of the two CPUs, such as an ONNX Runtime session's just after its run, makes a run take
 *   twice as long). Cores that share an L3 pass it in a few tens of ns; on a virtual machine whose two vCPUs the
 *   host has put on different CCDs or sockets it takes several times that.
 * - the fused forward kernel (src/sepconv/backends/native/csrc/fused_dwpw.c, included here) on one image of
 *   H x W pixels, C -> Cout channels, a 3x3 depthwise step at `stride`, its output in two tiles of `tile` pixels
 *   or fewer, one a thread, as sepconv.backends.fused.kernel_schedule shares a small image by rows (the Python
 *   driver passes the tile it gives). Each thread times its own call of the kernel (the job range of one tile,
 *   one thread inside); medians of `calls` rounds, microseconds, as [first thread, second thread, the round as
 *   a whole]:
 *   - "rows": thread 0 the top half, thread 1 the bottom half, plain stores (what the library runs);
 *   - "rows_swapped": thread 0 the bottom half, thread 1 the top half;
 *   - "rows_streamed": as "rows" with the output written by non-temporal stores;
 *   - "bottom_alone": thread 1 the bottom half while thread 0 waits (its time is 0);
 *   - "rows_bottom_shifted": as "rows" with the bottom half written SHIFT_BYTES further on in a larger buffer, away
 *     from the end of the top half; a whole number of 4 KiB pages, so each line keeps its offset in its page.
 *
 * benchmarks/bench_thread_placement.py builds this, runs it again and again beside a memory bandwidth probe and
 * records the samples. One C file rather than the library's own entry point: each thread's time is what it shows.
 */
#define _GNU_SOURCE
#include "../src/sepconv/backends/native/csrc/fused_dwpw.c"
#include "../src/sepconv/backends/native/csrc/depthwise_wgrad.c" /* the backward kernel's weight-gradient steps */
#include "../src/sepconv/backends/native/csrc/gemm_atb.c"
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define HOPS 20000L
#define TRIALS 5
#define SHIFT_BYTES (128 * 1024)

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, by_value);
    return v[n / 2];
}

/* Half the round trip of a cache line between the two threads, ns: one run of HOPS round trips. */
static double hop_run(void) {
    static _Alignas(128) atomic_long flag;
    double elapsed = 0;
    atomic_store(&flag, 0);
#pragma omp parallel num_threads(2)
    {
        int me = omp_get_thread_num();
#pragma omp barrier
        double t0 = omp_get_wtime();
        for (long i = 0; i < HOPS; ++i) {
            if (me == 0) {
                atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
                while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {}
            } else {
                while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1) {}
                atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
            }
        }
        if (me == 0) elapsed = omp_get_wtime() - t0;
    }
    return elapsed / HOPS / 2 * 1e9;
}

/* The least of TRIALS runs of hop_run, ns. */
static double hop_ns(void) {
    double least = hop_run();
    for (int t = 1; t < TRIALS; ++t) {
        double h = hop_run();
        least = h < least ? h : least;
    }
    return least;
}

typedef struct {
    const float *x, *wdw, *bdw, *wpw, *bpw;
    float *y;
    int H, W, C, Cout, stride, Ho, Wo, tile;
} layer_t;

/* `calls` rounds of the two tiles: job_of[t] the tile thread t runs (-1: none), the second tile's output `shift`
 * floats on; medians into out[3] (us) */
static int run(const layer_t *l, const int job_of[2], int stream, size_t shift, int calls, double out[3]) {
    double *times = (double *)malloc(sizeof(double) * 3 * (size_t)calls);
    int failed = 0;
    if (!times) return -1;
    for (int r = 0; r < calls; ++r) {
        double w0 = omp_get_wtime();
#pragma omp parallel num_threads(2)
        {
            int me = omp_get_thread_num(), job = job_of[me];
            double t0 = omp_get_wtime();
            if (job >= 0 &&
                sepconv_fused_dwpw_f32(l->x, 1, l->H, l->W, l->C, l->wdw, l->bdw, 3, 3, l->stride, l->stride, 1, 1,
                                       1, 1, 0, l->wpw, l->bpw, l->Cout, 0, job ? l->y + shift : l->y, NULL, l->Ho, l->Wo, l->tile, 1,
                                       stream, 3, job, job + 1, 1))
#pragma omp atomic write
                failed = 1;
            times[(size_t)r * 3 + me] = job >= 0 ? omp_get_wtime() - t0 : 0;
        }
        times[(size_t)r * 3 + 2] = omp_get_wtime() - w0;
    }
    for (int k = 0; k < 3; ++k) {
        double *v = (double *)malloc(sizeof(double) * (size_t)calls);
        if (!v) { failed = 1; break; }
        for (int r = 0; r < calls; ++r) v[r] = times[(size_t)r * 3 + k];
        out[k] = median(v, calls) * 1e6;
        free(v);
    }
    free(times);
    return failed ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "hop") == 0) {
        printf("%.1f\n", hop_ns());
        return 0;
    }
    layer_t l = {0};
    l.H = argc > 1 ? atoi(argv[1]) : 28;
    l.W = argc > 2 ? atoi(argv[2]) : 28;
    l.C = argc > 3 ? atoi(argv[3]) : 256;
    l.Cout = argc > 4 ? atoi(argv[4]) : 512;
    l.stride = argc > 5 ? atoi(argv[5]) : 2;
    l.tile = argc > 6 ? atoi(argv[6]) : 98;
    int calls = argc > 7 ? atoi(argv[7]) : 300;
    if (l.H < 1 || l.W < 1 || l.C < 1 || l.Cout < 1 || l.stride < 1 || l.tile < 1 || calls < 1) {
        fprintf(stderr, "thread_placement: H, W, C, Cout, stride, tile and calls must be >= 1, got %d %d %d %d %d %d "
                "%d\n", l.H, l.W, l.C, l.Cout, l.stride, l.tile, calls);
        return 2;
    }
    l.Ho = (l.H - 1) / l.stride + 1; /* 3x3, padding 1 */
    l.Wo = (l.W - 1) / l.stride + 1;
    if (sepconv_fused_jobs(1, l.Ho, l.Wo, l.tile, 1) != 2) {
        fprintf(stderr, "thread_placement: a tile of %d pixels makes %ld tiles of the %d x %d output, not two\n", l.tile,
                sepconv_fused_jobs(1, l.Ho, l.Wo, l.tile, 1), l.Ho, l.Wo);
        return 2;
    }
    size_t nx = (size_t)l.H * l.W * l.C, ny = (size_t)l.Ho * l.Wo * l.Cout;
    float *x = aligned_alloc(64, nx * 4), *wdw = aligned_alloc(64, (size_t)9 * l.C * 4),
          *bdw = aligned_alloc(64, (size_t)l.C * 4), *bpw = aligned_alloc(64, (size_t)l.Cout * 4),
          *wpw = aligned_alloc(64, ((size_t)l.C * ((l.Cout + NR - 1) / NR * NR) * 4 + 63) / 64 * 64),
          *y = aligned_alloc(64, (ny * 4 + SHIFT_BYTES + 63) / 64 * 64);
    if (!x || !wdw || !bdw || !bpw || !wpw || !y) return 1;
    for (size_t i = 0; i < nx; ++i) x[i] = (float)(i % 7) * 0.1f;
    for (int i = 0; i < 9 * l.C; ++i) wdw[i] = 0.1f;
    for (int i = 0; i < l.C; ++i) bdw[i] = 0.f;
    for (int i = 0; i < l.Cout; ++i) bpw[i] = 0.f;
    for (size_t i = 0; i < (size_t)l.C * ((l.Cout + NR - 1) / NR * NR); ++i) wpw[i] = (float)(i % 5) * 0.01f;
    l.x = x; l.wdw = wdw; l.bdw = bdw; l.wpw = wpw; l.bpw = bpw; l.y = y;

    static const struct { const char *name; int job_of[2], stream, shifted; } variants[] = {
        {"rows", {0, 1}, 0, 0},         {"rows_swapped", {1, 0}, 0, 0},         {"rows_streamed", {0, 1}, 1, 0},
        {"bottom_alone", {-1, 1}, 0, 0}, {"rows_bottom_shifted", {0, 1}, 0, 1}};
    double hop = hop_ns();
    printf("{\"hop_ns\": %.1f", hop);
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; ++v) {
        double t[3];
        if (run(&l, variants[v].job_of, variants[v].stream, variants[v].shifted ? SHIFT_BYTES / 4 : 0, calls, t))
            return 1;
        printf(", \"%s\": [%.1f, %.1f, %.1f]", variants[v].name, t[0], t[1], t[2]);
    }
    printf("}\n");
    return 0;
}
