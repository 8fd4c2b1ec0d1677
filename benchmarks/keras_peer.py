"""The Keras peer for bench_peers.py: times Keras layers in a separate Python that has TensorFlow.

    <python with tensorflow> benchmarks/keras_peer.py THREADS

Run by `bench_peers.py --keras-python PATH`, not by hand. TensorFlow and
PyTorch are not installed side by side here (TensorFlow alone is 1.6 GB), so
Keras runs in its own process. Protocol, one JSON object per line: the
parent sends {"in", "out", "size", "stride", "batch", "rounds"}; this script
answers {"separable_ms", "standard_ms", "versions"} with the medians of
`rounds` samples of about 20 ms each, Keras' SeparableConv2D and Conv2D
(3x3, 'same' padding, no bias, channels-last, float32) alternating, each
called through a `tf.function` (graph mode). Only the standard library and
TensorFlow/Keras are imported.
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def timed(fn, x, target_s=0.02):
    for _ in range(3):
        fn(x)
    start = time.perf_counter()
    fn(x).numpy()
    once = max(time.perf_counter() - start, 1e-7)
    n = max(1, int(target_s / once))

    def sample():
        start = time.perf_counter()
        for _ in range(n):
            y = fn(x)
        y.numpy()  # wait for the result
        return (time.perf_counter() - start) / n
    return sample


def main() -> int:
    threads = int(sys.argv[1])
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    for line in sys.stdin:
        req = json.loads(line)
        x = tf.random.normal((req["batch"], req["size"], req["size"], req["in"]))
        sep = keras.layers.SeparableConv2D(req["out"], 3, strides=req["stride"], padding="same", use_bias=False)
        std = keras.layers.Conv2D(req["out"], 3, strides=req["stride"], padding="same", use_bias=False)
        samplers = {"separable_ms": timed(tf.function(sep), x), "standard_ms": timed(tf.function(std), x)}
        samples = {k: [] for k in samplers}
        for _ in range(req["rounds"]):
            for k, sample in samplers.items():
                samples[k].append(sample())
        reply = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
        reply["versions"] = versions
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
