#!/usr/bin/env python3
"""gguf_pyseed.py — writes a small GGUF file with the `gguf` PyPI package (the
writer llama.cpp's converters use), holding every value type and every tensor
type modserve reads. The output is committed as
tests/fuzz/corpus/gguf/py_writer.gguf: a fuzz seed, and the fixture that
tests/test_gguf.c reads to check interoperability with gguf-py's writer.

Usage: python3 tools/gguf_pyseed.py OUT.gguf
"""
import sys

import numpy as np
import gguf
from gguf import quants


def main(out):
    w = gguf.GGUFWriter(out, arch="llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_uint64("t.u64", 1 << 50)
    w.add_int64("t.i64", -(1 << 50))
    w.add_float64("t.f64", 0.125)
    w.add_array("t.arr_str", ["a", "", "ünï"])
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.5])
    w.add_array("t.arr_bool", [True, False, True])

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 64)).astype(np.float32)  # 2 rows of 64
    w.add_tensor("t.f32", x)
    w.add_tensor("t.f16", x.astype(np.float16))
    w.add_tensor("t.bf16", quants.quantize(x, gguf.GGMLQuantizationType.BF16),
                 raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.add_tensor("t.q8_0", quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("t.q4_0", quants.quantize(x, gguf.GGMLQuantizationType.Q4_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor("t.3d", np.arange(24, dtype=np.float32).reshape(2, 3, 4))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
