"""Parsing of sweep values (--n 1k..64k ...) and BenchConfig validation."""

import pytest

from bench.config import BenchConfig, parse_bool_list, parse_dtype, parse_pass_list, parse_size, parse_sizes


@pytest.mark.parametrize(("text", "expected"), [("4k", 4096), ("1000", 1000), ("1M", 2**20), (" 2K ", 2048), (7, 7)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "k", "4x", "-1", "1.5k", "0"])
def test_parse_size_rejects_and_names_the_value(text):
    with pytest.raises(ValueError, match=repr(text) if text != "0" else "size must be"):
        parse_size(text)


def test_parse_sizes_range_and_lists():
    assert parse_sizes("1k..64k") == [1024 * 2**i for i in range(7)]
    assert parse_sizes("1k..3k") == [1024, 2048]
    assert parse_sizes("4k,1k,4096") == [1024, 4096]
    assert parse_sizes(["1k", 512, "2k..4k"]) == [512, 1024, 2048, 4096]
    with pytest.raises(ValueError, match="ends below"):
        parse_sizes("8k..1k")


def test_parse_dtype_aliases_and_errors():
    assert parse_dtype("bf16") == "bfloat16"
    assert parse_dtype("float32") == "float32"
    with pytest.raises(ValueError, match="'int8'"):
        parse_dtype("int8")


def test_parse_bool_and_pass_lists():
    assert parse_bool_list("both") == [True, False]
    assert parse_bool_list("false") == [False]
    assert parse_pass_list("both") == ["fwd", "fwd+bwd"]
    assert parse_pass_list("fwd+bwd,fwd") == ["fwd", "fwd+bwd"]
    with pytest.raises(ValueError, match="'bwd'"):
        parse_pass_list("bwd")
    with pytest.raises(ValueError, match="'maybe'"):
        parse_bool_list("maybe")


def test_config_validation_and_key():
    config = BenchConfig(variant="linear@torch-chunked", n=1024, d=64)
    assert config.key == "linear@torch-chunked|cpu|float32|causal|fwd|b1|h4|n1024|d64"
    assert config.as_row()["pass"] == "fwd"
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        BenchConfig(variant="x", n=0, d=64)
    with pytest.raises(ValueError, match="dtype must be one of"):
        BenchConfig(variant="x", n=8, d=64, dtype="int8")
    with pytest.raises(ValueError, match="pass must be one of"):
        BenchConfig(variant="x", n=8, d=64, pass_="bwd")
