/* Entry points for callers that pay per argument (Python's ctypes converts each argument of every call): a
 * kernel's arguments in one array of 64-bit integers, in the kernel's own parameter order, pointers as their
 * addresses and NULL as 0. Each wrapper only unpacks the array and calls the kernel; the kernel checks the
 * values as it does when called directly. */
#include <stdint.h>

int sepconv_fused_dwpw_f32(const float *x, int N, int H, int W, int C, const float *wdw, const float *bdw, int KH,
                           int KW, int sh, int sw, int ph, int pw, int dh, int dw, int dw_act, const float *wpw,
                           const float *bpw, int Cout, int pw_act, float *y, float *mid, int Ho, int Wo, int tile,
                           int groups, int stream, int parts, long job_begin, long job_end, int threads);

/* sepconv_fused_dwpw_f32 with a[0 .. 30] as its 31 arguments (sepconv.backends.fused builds the array once per
 * input size and fills in the tensors' addresses at each call). */
int sepconv_fused_dwpw_args(const int64_t *a) {
#define P(i) ((float *)(intptr_t)a[i])
#define I(i) ((int)a[i])
    return sepconv_fused_dwpw_f32(P(0), I(1), I(2), I(3), I(4), P(5), P(6), I(7), I(8), I(9), I(10), I(11), I(12),
                                  I(13), I(14), I(15), P(16), P(17), I(18), I(19), P(20), P(21), I(22), I(23), I(24),
                                  I(25), I(26), I(27), (long)a[28], (long)a[29], I(30));
#undef P
#undef I
}
