"""Durations and sizes as operators write them: parsed strictly, refused loudly."""

from __future__ import annotations

import pytest

from web_node.units import format_duration, format_size, parse_duration, parse_size

MiB = 1024**2
GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("10s500ms", 10.5),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
    ],
)
def test_durations_in_the_documented_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "10",  # seconds or minutes? refused rather than guessed
        "",
        "ms",
        "10 s",
        "10S",
        "-1s",
        "1m30",  # trailing number without a unit
        "1s1m",  # units out of order
        "1h1h",  # a unit twice
        "1e3s",
        "1_000s",
        "ten seconds",
        "\uff11s",  # FULLWIDTH DIGIT ONE: looks like "1s", is not ASCII
        "\u0661s",  # ARABIC-INDIC DIGIT ONE
    ],
)
def test_bad_durations_are_refused_with_the_valid_forms(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    for form in ("500ms", "10s", "1m30s"):
        assert form in message


@pytest.mark.parametrize("value", [10, 1.5, None, True])
def test_durations_must_be_strings(value: object) -> None:
    with pytest.raises(ValueError, match="500ms, 10s, 1m30s"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256M", 256 * MiB),
        ("1G", GiB),
        ("512MiB", 512 * MiB),
        ("4096", 4096),
        (4096, 4096),  # a TOML integer is a number of bytes
        ("64K", 64 * 1024),
        ("2KiB", 2048),
        ("1.5G", int(1.5 * GiB)),
        ("1MB", 1000**2),  # decimal units are powers of 1000
        ("256 M", 256 * MiB),
    ],
)
def test_sizes_in_the_documented_forms(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "",
        "M",
        "lots",
        "256X",
        "256MiBB",
        "-1",
        "-256M",
        "1e9",
        "1_000",
        "max",  # the kernel's word for "no limit": leave the key out instead
        "\uff11G",  # FULLWIDTH DIGIT ONE
    ],
)
def test_bad_sizes_are_refused_with_the_valid_forms(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    message = str(info.value)
    assert repr(text) in message
    for form in ("256M", "1G", "512MiB", "bytes"):
        assert form in message


@pytest.mark.parametrize("value", ["0", 0, "0M", -5])
def test_sizes_must_be_positive(value: str | int) -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_size(value)


def test_plain_bytes_must_be_whole() -> None:
    # "1.5" bytes cannot be written to memory.max; silently using 1 byte would be worse than refusing.
    with pytest.raises(ValueError, match=r"1\.5"):
        parse_size("1.5")


@pytest.mark.parametrize("value", [1.5, True, None, [256]])
def test_sizes_must_be_strings_or_integers(value: object) -> None:
    with pytest.raises(ValueError, match="256M, 1G, 512MiB"):
        parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "unlimited"), (512, "512 B"), (256 * MiB, "256 MiB"), (GiB, "1 GiB"), (int(1.5 * GiB), "1.5 GiB")],
)
def test_format_size(size: int | None, text: str) -> None:
    assert format_size(size) == text


def test_format_size_round_trips_through_parse_size() -> None:
    for size in (4096, 64 * 1024, 256 * MiB, 3 * GiB):
        assert parse_size(format_size(size).replace(" ", "")) == size


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0.4 s"), (12, "12 s"), (200, "3m20s"), (3 * 3600 + 60, "3h01m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
