import random
import struct
import zlib

import pytest
import torch

from phasenets.cache.fileformat import (
    FORMAT_VERSION,
    MAGIC,
    PAGE_SIZE,
    CacheFormatError,
    CacheHeader,
    decode_header,
    encode_header,
    payload_crc32,
    read_header,
)


def make_header(dtype="fp16", **overrides):
    fields = dict(
        fingerprint="ab" * 32,
        num_samples=10,
        views=2,
        feature_shape=(3, 4, 4),
        dtype=dtype,
        payload_crc32=1234,
        scale=torch.tensor([0.5, 1.0, 2.0]) if dtype == "int8" else None,
    )
    fields.update(overrides)
    return CacheHeader(**fields)


def write_file(tmp_path, header, payload_byte=b"\x07"):
    path = tmp_path / "features.pncache"
    path.write_bytes(encode_header(header) + payload_byte * header.payload_nbytes)
    return path


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
def test_round_trip(tmp_path, dtype):
    header = make_header(dtype)
    raw = encode_header(header)
    assert len(raw) == header.payload_offset and header.payload_offset % PAGE_SIZE == 0
    parsed = read_header(write_file(tmp_path, header))
    assert parsed.fingerprint == header.fingerprint
    assert parsed.feature_shape == (3, 4, 4) and parsed.views == 2 and parsed.num_samples == 10
    assert parsed.dtype == dtype and parsed.payload_crc32 == 1234
    if dtype == "int8":
        assert torch.equal(parsed.scale, header.scale)
    else:
        assert parsed.scale is None


def test_offset_does_not_depend_on_crc():
    assert make_header(payload_crc32=0).payload_offset == make_header(payload_crc32=2**32 - 1).payload_offset


def test_wide_int8_scale_spills_past_first_page(tmp_path):
    header = make_header("int8", feature_shape=(3000,), scale=torch.full((3000,), 0.25))
    assert header.payload_offset > PAGE_SIZE
    assert torch.equal(read_header(write_file(tmp_path, header)).scale, header.scale)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: b"NOTCACHE" + raw[8:], "not a phasenets cache file"),
        (lambda raw: raw[:8] + struct.pack("<I", FORMAT_VERSION + 1) + raw[12:], "format version"),
        (lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "checksum mismatch"),
        (lambda raw: raw[:12] + struct.pack("<I", 1 << 30) + raw[16:], "implausible"),
        (lambda raw: raw[:10], "too short"),
        (lambda raw: b"", "too short"),
    ],
)
def test_corrupt_headers_are_refused(corrupt, message):
    with pytest.raises(CacheFormatError, match=message):
        decode_header(corrupt(encode_header(make_header())))


def test_header_with_valid_crc_but_bad_fields_is_refused():
    # a header whose checksum is right but whose content is nonsense (a buggy or hostile writer)
    meta = b'{"fingerprint": "x", "num_samples": -1}'
    prefix = struct.pack("<8sIIII", MAGIC, FORMAT_VERSION, len(meta), 0, 0)
    crc = zlib.crc32(meta, zlib.crc32(prefix))
    raw = struct.pack("<8sIIII", MAGIC, FORMAT_VERSION, len(meta), 0, crc) + meta
    with pytest.raises(CacheFormatError, match="exactly the fields"):
        decode_header(raw)


def test_deeply_nested_json_is_refused():
    meta = b"[" * 50000
    prefix = struct.pack("<8sIIII", MAGIC, FORMAT_VERSION, len(meta), 0, 0)
    crc = zlib.crc32(meta, zlib.crc32(prefix))
    raw = struct.pack("<8sIIII", MAGIC, FORMAT_VERSION, len(meta), 0, crc) + meta
    with pytest.raises(CacheFormatError, match="not valid JSON"):
        decode_header(raw)


def test_truncated_and_extended_files_are_refused(tmp_path):
    path = write_file(tmp_path, make_header())
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(CacheFormatError, match="torn or not ours"):
        read_header(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(CacheFormatError, match="torn or not ours"):
        read_header(path)
    path.write_bytes(data[:PAGE_SIZE // 2])
    with pytest.raises(CacheFormatError):
        read_header(path)


def test_fuzzed_headers_raise_format_errors_only():
    rng = random.Random(0)
    valid = encode_header(make_header("int8"))
    for _ in range(2000):
        raw = bytearray(valid)
        mode = rng.randrange(3)
        if mode == 0:  # flip a few random bytes anywhere in the header
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif mode == 1:  # truncate
            raw = raw[: rng.randrange(len(raw))]
        else:  # random bytes behind a valid magic and version
            raw = raw[:12] + bytearray(rng.randbytes(rng.randrange(64)))
        try:
            decode_header(bytes(raw))
        except CacheFormatError:
            pass


def test_fuzzed_header_with_recomputed_crc_is_validated_field_by_field():
    rng = random.Random(1)
    valid = encode_header(make_header("int8"))
    _, _, meta_nbytes, scale_nbytes, _ = struct.unpack_from("<8sIIII", valid)
    body_end = 24 + meta_nbytes + scale_nbytes
    for _ in range(2000):
        body = bytearray(valid[24:body_end])
        body[rng.randrange(len(body))] = rng.randrange(256)
        prefix = struct.pack("<8sIIII", MAGIC, FORMAT_VERSION, meta_nbytes, scale_nbytes, 0)
        crc = zlib.crc32(bytes(body), zlib.crc32(prefix))
        raw = struct.pack("<8sIIII", MAGIC, FORMAT_VERSION, meta_nbytes, scale_nbytes, crc) + body
        try:
            header = decode_header(bytes(raw))
        except CacheFormatError:
            continue
        # whatever got through is self-consistent
        assert header.payload_offset >= body_end and header.num_samples >= 0 and header.views >= 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dtype="fp64"), "dtype"),
        (dict(feature_shape=()), "feature_shape"),
        (dict(feature_shape=(3, 0)), "feature_shape"),
        (dict(views=0), "views"),
        (dict(scale=torch.ones(3)), "takes no scale"),
    ],
)
def test_encode_refuses_invalid_headers(overrides, message):
    with pytest.raises(ValueError, match=message):
        encode_header(make_header(**overrides))


@pytest.mark.parametrize("scale", [None, torch.ones(2), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, float("nan"), 1.0])])
def test_int8_needs_a_valid_scale(scale):
    with pytest.raises(ValueError, match="int8"):
        encode_header(make_header("int8", scale=scale))


def test_payload_crc32_matches_zlib_over_chunks():
    payload = torch.randn(1000, 37).to(torch.bfloat16)
    assert payload_crc32(payload) == zlib.crc32(payload.view(torch.uint8).numpy().tobytes())
