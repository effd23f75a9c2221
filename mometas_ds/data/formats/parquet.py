"""Parquet (``.parquet``): the column ``text_field``; a large file splits by row groups."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from mometas_ds.data.formats.base import CorpusFormat, Part, register_format
from mometas_ds.data.formats.lines import READ_ERRORS
from mometas_ds.data.report import CorpusReport, check_value


def read_parquet(path: str, text_field: str, report: CorpusReport,
                  part: Optional[Part] = None) -> Iterator[Tuple[str, int]]:
    row = 0
    try:
        parquet = pq.ParquetFile(path)
        num_rows = parquet.metadata.num_rows
        columns = parquet.schema_arrow.names
        if num_rows == 0:
            report.skip("empty_file", path)
            return
        if text_field not in columns:
            report.skip("missing_text_field", f"{path}: no column {text_field!r} (columns: {', '.join(columns)})",
                        count=num_rows)
            return
        groups = None
        if part is not None:  # planned only for a file with the column and rows
            groups, row = list(range(part.start, part.stop)), part.first_line - 1
        for batch in parquet.iter_batches(batch_size=1024, columns=[text_field], row_groups=groups):
            for value in batch.column(0).to_pylist():
                row += 1
                text = check_value(value, f"{path}:{row}", report)
                if text is not None:
                    yield text, row
    except (pa.ArrowException, *READ_ERRORS) as err:
        report.skip("unreadable_file", f"{path}:{row + 1} ({type(err).__name__}: {err})")


PARQUET = register_format(CorpusFormat("parquet", (".parquet",), read_parquet, split="row_groups"))
