"""What reading a corpus found: usable documents and tokens, and every skipped record counted under one of
``SKIP_REASONS`` with its first "file:line" examples (the package's docstring has the skip rules)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

MIN_DOC_TOKENS = 2
SKIP_REASONS = {
    "missing_file": "path or glob that matched no file, dangling symlink, or file gone before it was read",
    "empty_file": "file without a non-blank line or row",
    "unreadable_file": "corrupt or truncated file (gzip, parquet, dataset directory)",
    "unsupported_format": "file whose name matches no corpus format (.jsonl/.json/.txt[.gz], .parquet, one of "
                          "--user_modules), nor a save_to_disk directory",
    "malformed_json": "line that is not valid JSON or not a JSON object",
    "missing_text_field": "record without the text field, or with null there",
    "non_string_text": "record whose text field is not a string",
    "non_utf8": "line (or text) that is not valid UTF-8",
    "too_short": f"document with fewer than {MIN_DOC_TOKENS} tokens",
}


@dataclass
class CorpusReport:
    """What was read and what was skipped, and why. ``sources`` are the files read, in order
    (a ``DatasetDict`` directory contributes ``path[split]`` entries)."""

    max_examples: int = 5
    sources: List[str] = field(default_factory=list)
    documents: int = 0  # usable documents
    tokens: int = 0  # tokens of usable documents (before cls/sep/pad are added)
    train_sequences: int = 0
    meta_sequences: int = 0
    truncated_documents: int = 0  # --packing per_document: documents longer than one row
    truncated_tokens: int = 0  # --packing per_document: their tokens cut off (not trained on)
    skipped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: Optional[str], count: int = 1) -> None:
        """Count ``count`` skipped records; keep ``where`` ("file:line ...") as an example while there is room."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        examples = self.examples.setdefault(reason, [])
        if where is not None and len(examples) < self.max_examples:
            examples.append(where)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        lines = [
            f"{len(self.sources)} source(s), {self.documents} document(s), {self.tokens} token(s) -> "
            f"{self.train_sequences} training + {self.meta_sequences} meta-validation sequence(s)"
        ]
        if self.truncated_documents:
            lines.append(f"truncated {self.truncated_documents} document(s) longer than one row "
                         f"(--packing per_document): {self.truncated_tokens} token(s) dropped")
        if self.skipped:
            lines.append(f"skipped {self.total_skipped}:")
            for reason in SKIP_REASONS:
                if reason in self.skipped:
                    shown = "; ".join(self.examples.get(reason, []))
                    lines.append(f"  {reason} ({SKIP_REASONS[reason]}): {self.skipped[reason]}, e.g. {shown}")
        return "\n".join(lines)

    def merge(self, other: "CorpusReport") -> None:
        """Add ``other`` (the report of what follows in corpus order): counts summed, sources appended,
        examples appended while there is room (so they stay the first ``max_examples`` in corpus order)."""
        self.sources.extend(other.sources)
        for name in ("documents", "tokens", "train_sequences", "meta_sequences", "truncated_documents",
                     "truncated_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason in SKIP_REASONS:  # in a fixed order, so merged reports compare equal
            if reason in other.skipped:
                self.skipped[reason] = self.skipped.get(reason, 0) + other.skipped[reason]
                examples = self.examples.setdefault(reason, [])
                examples.extend(other.examples.get(reason, [])[: max(self.max_examples - len(examples), 0)])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusReport":
        return cls(**d)


def check_value(value, where: str, report: CorpusReport) -> Optional[str]:
    """The text of a column value, or None (and a skip) when it is unusable."""
    if value is None:
        report.skip("missing_text_field", where)
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            report.skip("non_utf8", where)
            return None
    if not isinstance(value, str):
        report.skip("non_string_text", f"{where} ({type(value).__name__})")
        return None
    return value
