"""Text corpora shipped with the package, for the character-level language model of the Transformer example.

Each corpus is a gzip-compressed UTF-8 text (see README.md beside this file for where it comes from and its
licence). :func:`load_corpus` returns its text, checked against the SHA-256 recorded here, so a damaged install is
an error rather than a silently different benchmark.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

from ..errors import InvalidInputError

__all__ = ["CORPORA", "load_corpus"]

CORPORA: dict[str, tuple[str, str]] = {
    "shakespeare": ("shakespeare.txt.gz", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}
"""Corpus name -> (file in this package, SHA-256 of the uncompressed text)."""


def load_corpus(name: str = "shakespeare") -> str:
    """The whole text of a shipped corpus.

    Raises:
        InvalidInputError: an unknown name, or a file whose content is not the recorded one.
    """
    if name not in CORPORA:
        raise InvalidInputError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    filename, digest = CORPORA[name]
    data = gzip.decompress(resources.files(__name__).joinpath(filename).read_bytes())
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidInputError(f"the corpus file {filename} is damaged (its SHA-256 differs from the recorded one)")
    return data.decode("utf-8")
