"""Fields that result records share between the stage that writes them and the tables that read them."""

from __future__ import annotations

# What a bench JSON (bench_cpu.json, bench_trt_<precision>.json, and a TensorRT build record) says of the run it
# measured, copied from the run's metrics: the model and the bytes a b-bit weight store takes (packed_bytes).
BENCH_RUN_FIELDS = ("model", "family", "method", "w_bits", "a_bits", "seed", "packed_bytes")
