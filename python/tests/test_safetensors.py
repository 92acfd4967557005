"""The safetensors writer and reader, without a node."""

import json
import struct

import numpy as np
import pytest

from fhenode import BFloat16, safetensors


def header_of(data: bytes) -> dict:
    (size,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + size])


@pytest.mark.parametrize(
    "dtype, code",
    [
        (np.float64, "F64"),
        (np.float32, "F32"),
        (np.float16, "F16"),
        (np.int64, "I64"),
        (np.int32, "I32"),
        (np.int16, "I16"),
        (np.int8, "I8"),
        (np.uint64, "U64"),
        (np.uint32, "U32"),
        (np.uint16, "U16"),
        (np.uint8, "U8"),
        (np.bool_, "BOOL"),
    ],
)
def test_round_trip_keeps_dtype_shape_and_values(dtype, code):
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    scalar = np.array(5, dtype=dtype)
    data = safetensors.dumps({"a": array, "s": scalar})
    header = header_of(data)
    assert header["a"]["dtype"] == code and header["a"]["shape"] == [2, 3, 4]
    assert header["s"]["shape"] == []
    tensors, metadata = safetensors.loads(data)
    assert metadata == {}
    for name, want in [("a", array), ("s", scalar)]:
        got = tensors[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_bf16_is_the_upper_half_of_float32_rounded_to_nearest_even():
    exact = np.array([[1.0, -2.5], [0.0, 2.0**100]], dtype=np.float32)
    # Exactly representable values keep every bit: the upper 16 bits of their float32.
    assert (exact.view(np.uint32) & 0xFFFF == 0).all()
    data = safetensors.dumps({"x": BFloat16(exact), "s": BFloat16(np.float32(-0.5))})
    assert header_of(data)["x"] == {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}
    raw = data[-10:-2]
    np.testing.assert_array_equal(np.frombuffer(raw, "<u2"), (exact.view("<u4") >> 16).ravel())
    tensors, _ = safetensors.loads(data)
    assert tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"], exact)
    assert tensors["s"].shape == () and tensors["s"] == -0.5
    # 1 + 2^-8 lies halfway between two bf16 values: it rounds to the even one, 1.0;
    # 1 + 3·2^-9 rounds up to 1 + 2^-7.
    halfway = np.array([1 + 2**-8, 1 + 3 * 2**-9], dtype=np.float32)
    tensors, _ = safetensors.loads(safetensors.dumps({"h": BFloat16(halfway)}))
    np.testing.assert_array_equal(tensors["h"], [1.0, 1 + 2**-7])


def test_header_is_padded_with_spaces_to_a_multiple_of_8():
    for name in ["a", "ab", "abc", "abcd", "abcdefg"]:
        data = safetensors.dumps({name: np.zeros(3, np.float32)}, metadata={"k": "v"})
        (size,) = struct.unpack_from("<Q", data)
        assert size % 8 == 0
        text = data[8 : 8 + size]
        json_text = text.rstrip(b" ")
        assert json_text.endswith(b"}") and len(text) - len(json_text) < 8
        assert len(data) == 8 + size + 12
        assert header_of(data)["__metadata__"] == {"k": "v"}


def test_data_is_little_endian_c_order_in_the_given_order():
    fortran = np.asfortranarray(np.arange(6, dtype=">f8").reshape(2, 3))
    data = safetensors.dumps({"z": np.array([7], np.int16), "f": fortran})
    header = header_of(data)
    assert list(header) == ["z", "f"]
    assert header["z"]["data_offsets"] == [0, 2] and header["f"]["data_offsets"] == [2, 50]
    (size,) = struct.unpack_from("<Q", data)
    body = data[8 + size :]
    np.testing.assert_array_equal(np.frombuffer(body[2:], "<f8"), np.arange(6.0))
    tensors, _ = safetensors.loads(data)
    np.testing.assert_array_equal(tensors["f"], np.arange(6.0).reshape(2, 3))


def test_lists_scalars_and_torch_like_tensors_are_accepted():
    class FakeTensor:
        """Duck-types the torch calls the package uses."""

        def __init__(self, array, dtype=None):
            self.array, self.dtype = array, dtype

        def detach(self):
            return self

        def cpu(self):
            return self

        def float(self):
            return FakeTensor(self.array.astype(np.float32))

        def numpy(self):
            if self.dtype == "torch.bfloat16":
                raise TypeError("Got unsupported ScalarType BFloat16")
            return self.array

    data = safetensors.dumps(
        {
            "list": [[1.0, 2.0]],
            "scalar": 3.5,
            "torch": FakeTensor(np.ones(2, np.float16)),
            "bf16": FakeTensor(np.array([0.5, 2.0]), dtype="torch.bfloat16"),
        }
    )
    header = header_of(data)
    assert [header[k]["dtype"] for k in ["list", "scalar", "torch", "bf16"]] == [
        "F64",
        "F64",
        "F16",
        "BF16",
    ]
    tensors, _ = safetensors.loads(data)
    np.testing.assert_array_equal(tensors["bf16"], [0.5, 2.0])


def test_unsupported_and_malformed_input_is_refused():
    with pytest.raises(TypeError, match="'c'"):
        safetensors.dumps({"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError):
        safetensors.dumps({"__metadata__": np.zeros(1)})
    good = safetensors.dumps({"x": np.zeros(4, np.float32)})
    for bad in [b"", good[:7], struct.pack("<Q", 1 << 40) + good[8:], good[:-1]]:
        with pytest.raises(ValueError):
            safetensors.loads(bad)
