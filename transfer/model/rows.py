"""A ``.npy`` array on disk, written and read a few rows at a time with plain file I/O, never mapped.

The feature caches are written by position as batches arrive and read back in shuffled batches every
epoch. Through a memory map every page touched stays in the process's resident memory, so a cache read
once over grows the process to the cache's size; with ``pread``/``pwrite`` only the rows in hand are in
memory, and the page cache (which the kernel gives back under pressure) holds the rest. The files are
ordinary ``.npy`` files: ``numpy.load`` opens them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class RowFile:
    """An ``[N, ...]`` array in a ``.npy`` file, by rows.

    Use :meth:`create` to make one (its rows zero until written) or :meth:`open` to read one; close it, or use
    it as a context manager.
    """

    def __init__(self, path: Path, writable: bool):
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")  # the header alone: its shape, dtype and data offset
        self.shape, self.dtype, self._offset = tuple(header.shape), header.dtype, header.offset
        del header
        if not self.shape:
            raise ValueError(f"{self.path} holds a scalar, not rows")
        self.row_shape = self.shape[1:]
        self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...], dtype: str) -> RowFile:
        """A new file of ``shape`` and ``dtype``, every row zero (a sparse file until written)."""
        from numpy.lib.format import open_memmap

        array = open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # writes the header and sizes the file
        del array
        return cls(path, writable=True)

    @classmethod
    def open(cls, path: Path) -> RowFile:
        return cls(path, writable=False)

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def write(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows[k]`` at row ``positions[k]``; a run of consecutive positions is one write."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) != len(rows) or rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: {len(positions)} positions for rows of shape {rows.shape}, "
                             f"expected rows of {self.row_shape}")
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"{self.path.name}: a position outside 0..{len(self) - 1}")
        start = 0
        for end in [*(np.flatnonzero(np.diff(positions) != 1) + 1).tolist(), len(positions)]:
            data = rows[start:end].tobytes()
            written = os.pwrite(self._fd, data, self._offset + int(positions[start]) * self._row_bytes)
            if written != len(data):
                raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes (is the disk full?)")
            start = end

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions``, in that order, as a new array."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.row_shape), dtype=self.dtype)
        buffer = out.reshape(len(positions), -1).view(np.uint8)
        for k, position in enumerate(positions.tolist()):
            if not 0 <= position < len(self):
                raise IndexError(f"{self.path.name}: row {position} outside 0..{len(self) - 1}")
            data = os.pread(self._fd, self._row_bytes, self._offset + position * self._row_bytes)
            if len(data) != self._row_bytes:
                raise OSError(f"{self.path}: row {position} is cut short (the file is truncated)")
            buffer[k] = np.frombuffer(data, dtype=np.uint8)
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive), in one read."""
        stop = min(stop, len(self))
        count = max(0, stop - start)
        data = os.pread(self._fd, count * self._row_bytes, self._offset + start * self._row_bytes)
        if len(data) != count * self._row_bytes:
            raise OSError(f"{self.path}: rows {start} to {stop} are cut short (the file is truncated)")
        return np.frombuffer(data, dtype=self.dtype).reshape(count, *self.row_shape).copy()
