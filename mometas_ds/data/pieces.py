"""A huge document tokenized in pieces, so that memory does not grow with its length: cut before whitespace
that follows a non-whitespace character, where BERT's pre-tokenizer splits words too (the pieces' tokens are
the whole text's; tests/unit/data/test_long_documents.py)."""
from __future__ import annotations

import re
from typing import Iterator

PIECE_CHARS = 1 << 20  # a document longer than this many characters is tokenized in pieces of at most this
BOUNDARY = re.compile(r"[^\s][ \t\n\r]")  # a whitespace character after a non-whitespace one


def split_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``size`` characters that join to it, each cut just before a
    space, tab or newline that follows a non-whitespace character, in the second half of the piece. BERT's
    pre-tokenizer splits words there too, so the pieces' tokens are the whole text's
    (tests/unit/data/test_long_documents.py checks it for WordPiece). Only a stretch of ``size // 2`` characters
    without such a place (one "word" of half a million characters) is cut anywhere, where its tokens may differ."""
    start, end = 0, len(text)
    while end - start > size:
        found = BOUNDARY.search(text, start + size // 2, start + size)
        cut = found.start() + 1 if found else start + size
        yield text[start:cut]
        start = cut
    yield text[start:]


def document_pieces(documents):
    """(piece, source, line, first piece, last piece) for each document's pieces (a short document: one)."""
    for text, source, line in documents:
        if len(text) <= PIECE_CHARS:
            yield text, source, line, True, True
            continue
        pieces = split_pieces(text, PIECE_CHARS)
        previous, first = next(pieces), True
        for piece in pieces:
            yield previous, source, line, first, False
            previous, first = piece, False
        yield previous, source, line, first, True
