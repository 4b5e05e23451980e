"""Reading the validated snapshot (``data/clean.parquet``) back in streams: the pool and the gold
rows are read a batch of file rows at a time, never the whole file (the pseudo-label stage, the pool's
shards)."""

from __future__ import annotations

from selftrain.core.common import io

BATCH_ROWS = 8192


def scan_clean(uri: str, columns: list[str], unlabeled: bool, batch_rows: int = BATCH_ROWS):
    """Arrow batches (``batch_rows`` file rows at a time) of the columns among ``columns``
    that the file has, of the rows whose split is (not) 'unlabeled'; never the whole file at once."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = io.fs_path(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        cols = [c for c in dict.fromkeys([*columns, "split"]) if c in pf.schema_arrow.names]
        for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
            is_pool = pc.fill_null(pc.equal(rb.column("split"), "unlabeled"), False)
            yield rb.filter(is_pool if unlabeled else pc.invert(is_pool)).select([c for c in cols if c in columns])
