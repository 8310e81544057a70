"""`embed -o FILE`: the vectors of a run as one matrix, a row per successful input in input order.

`emb.npy` is an (N, D) array with the paths beside it in `emb.jsonl` (`{"row": i, "path": ...}` a
line); `emb.parquet` is one table with a `path` column and a fixed-size-list `embedding` column.
Failed inputs get no row. Rows stream into anonymous temporary files (never a Python object per
vector, so a million images cost disk, not memory) and become the named files only at the end, each
written atomically: an interrupted run leaves the earlier files as they were and no stray files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from vitkit.errors import UsageError
from vitkit.outputs.files import atomic_write_path, output_errors
from vitkit.outputs.writers import printable, to_json

EMBEDDING_FORMATS = (".npy", ".parquet")
DTYPES = ("float32", "float16")
_PARQUET_ROWS_PER_GROUP = 65536


def paths_file_of(target: str | os.PathLike[str]) -> Path:
    """emb.npy -> emb.jsonl: where an .npy matrix's row paths go."""
    return Path(target).with_suffix(".jsonl")


def check_embedding_output(target: str | None, dtype: str) -> str:
    """The -o target's format (.npy or .parquet), refusing anything else before a model loads."""
    if not target:
        raise UsageError("embed writes its vectors to a file", hint="add -o emb.npy (or -o emb.parquet)")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be float32 or float16, not {dtype!r}")
    extension = os.path.splitext(target)[1].lower()
    if extension not in EMBEDDING_FORMATS:
        raise UsageError(f"-o {target}: embed writes .npy (with a .jsonl of paths beside it) or .parquet",
                         hint="name the file emb.npy or emb.parquet")
    if extension == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("-o *.parquet needs pyarrow, which is not installed",
                             hint="pip install 'vitkit[parquet]' (or write -o emb.npy)") from None
    return extension


class EmbeddingFile:
    """A record sink: takes each ok record's `embedding` as the next row and gives the record back with
    its `row` (and without the vector unless `keep_vectors`: stdout gets paths and rows, not 768 floats)."""

    def __init__(self, target: str, dtype: str = "float32", dim: int = 0, keep_vectors: bool = False) -> None:
        self.format = check_embedding_output(target, dtype)
        self.target, self.dtype, self.dim, self.keep_vectors = Path(target), np.dtype(dtype), dim, keep_vectors
        self.rows = 0
        self._width: int | None = None  # the first vector's length; every later one must match
        with output_errors(self.target):
            # Beside the target: the same disk, and an unwritable folder fails now rather than after the run.
            self.target.resolve().parent.mkdir(parents=True, exist_ok=True)
            self._vectors: IO[bytes] = tempfile.TemporaryFile(dir=self.target.resolve().parent)
            self._paths: IO[bytes] = tempfile.TemporaryFile(dir=self.target.resolve().parent)

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        if "error" in record:
            return record
        vector = np.asarray(record["embedding"])
        if self._width is None:
            self._width = vector.shape[-1]
        if vector.shape != (self._width,):
            raise ValueError(f"embedding of shape {vector.shape} after rows of {self._width}")
        with output_errors(self.target):
            self._vectors.write(vector.astype(self.dtype).tobytes())
            self._paths.write((to_json({"row": self.rows, "path": record["path"]}) + "\n").encode("utf-8"))
        shown = dict(record) if self.keep_vectors else {k: v for k, v in record.items() if k != "embedding"}
        shown["row"] = self.rows
        self.rows += 1
        return shown

    def close(self) -> None:
        width = self._width if self._width is not None else self.dim
        try:
            for buffer in (self._vectors, self._paths):
                buffer.flush()
                buffer.seek(0)
            (self._write_npy if self.format == ".npy" else self._write_parquet)(width)
        finally:
            self._vectors.close()
            self._paths.close()

    def _write_npy(self, width: int) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, width)}
        with atomic_write_path(self.target) as matrix, atomic_write_path(paths_file_of(self.target)) as paths:
            with output_errors(self.target), open(matrix, "wb") as out:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(self._vectors, out, 1 << 22)
            with output_errors(paths), open(paths, "wb") as out:
                shutil.copyfileobj(self._paths, out, 1 << 22)

    def _write_parquet(self, width: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("path", pa.string()),
                            ("embedding", pa.list_(pa.from_numpy_dtype(self.dtype), width))])
        lines = io.TextIOWrapper(self._paths, encoding="utf-8")
        with atomic_write_path(self.target) as temp, output_errors(self.target):
            with pq.ParquetWriter(str(temp), schema) as writer:
                for start in range(0, self.rows, _PARQUET_ROWS_PER_GROUP):
                    count = min(_PARQUET_ROWS_PER_GROUP, self.rows - start)
                    flat = np.frombuffer(self._vectors.read(count * width * self.dtype.itemsize), dtype=self.dtype)
                    # Parquet strings are UTF-8: an undecodable byte in a name shows as \xNN, as in CSV.
                    paths = [printable(json.loads(lines.readline())["path"]) for _ in range(count)]
                    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat), width)
                    writer.write_table(pa.Table.from_arrays([pa.array(paths, pa.string()), embedding], schema=schema))
                if self.rows == 0:
                    writer.write_table(schema.empty_table())
