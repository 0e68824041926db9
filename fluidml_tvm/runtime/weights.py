"""The weights file beside a library compiled with external weights (``NAME.weights``).

Raw arrays at 4096-byte aligned offsets; the index (name, dtype, shape, offset) lives in the
library's metadata JSON. Loading maps the file copy-on-write and gives the pages to TVM through
DLPack, so the weights are held once. Only numpy and the TVM runtime are needed (boards).
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from ..errors import FluidMLError

ALIGN = 4096


def weights_path(lib_path: str) -> str:
    """The weights file of a library compiled with external weights: ``model.weights``."""
    return os.path.splitext(os.fspath(lib_path))[0] + ".weights"


def load_weights(lib_path: str, metadata: dict, device) -> list:
    """The external weights of ``lib_path`` as tensors on ``device`` ([] if it embeds them).

    Raises :class:`FluidMLError` when the file is missing or truncated.
    """
    if not metadata.get("weights"):
        return []
    wpath = weights_path(lib_path)
    if not os.path.exists(wpath):
        raise FluidMLError(f"{lib_path} keeps its weights in {wpath}, which is missing")
    try:
        return map_weights(wpath, metadata["weights"]["index"], device)
    except ValueError as err:
        raise FluidMLError(str(err)) from None


def write_weights(path: str, weights: list, gathered=()) -> list:
    """Write ``[(name, array)]`` to one file, each array at a 4096-aligned offset; returns index.

    Names in ``gathered`` (weights read only as gather tables, e.g. embeddings) are marked
    ``"access": "gather"``: the loader maps them for random access. Their pages are written back
    and dropped from the page cache here, so that a loader reads them page by page instead of
    mapping the large page-cache folios the writer left (Linux maps a whole folio on a fault:
    GPT-NeoX-small's 103 MB embedding was 86 MB resident after a 128-token run, under 1 MB this
    way).
    """
    index, offset, drop = [], 0, []
    with open(path, "wb") as f:
        for name, arr in weights:
            arr = np.asarray(arr, order="C")  # ascontiguousarray would make a scalar 1-d
            pad = (-offset) % ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(arr.tobytes())
            entry = {"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                     "offset": offset}
            if name in gathered:
                entry["access"] = "gather"
                drop.append((offset, arr.nbytes))
            index.append(entry)
            offset += arr.nbytes
        if drop and hasattr(os, "posix_fadvise"):
            f.flush()
            os.fdatasync(f.fileno())
            for off, n in drop:
                os.posix_fadvise(f.fileno(), off, n, os.POSIX_FADV_DONTNEED)
    return index


def map_weights(path: str, index: list, device) -> list:
    """The weights as TVM tensors sharing the file's pages (CPU), or copied to ``device``."""
    from . import backend

    cpu = backend.cpu().dlpack_device_type()
    arrays = []
    size = os.path.getsize(path)
    for entry in index:
        dtype = np.dtype(entry["dtype"])
        count = int(np.prod(entry["shape"])) if entry["shape"] else 1
        if entry["offset"] + count * dtype.itemsize > size:
            raise ValueError(f"{path} is truncated (weight {entry['name']})")
        arr = np.memmap(path, dtype=dtype, mode="c", offset=entry["offset"],
                        shape=tuple(entry["shape"]))
        mapped = getattr(arr, "_mmap", None)
        if entry.get("access") == "gather" and mapped is not None and hasattr(mmap, "MADV_RANDOM"):
            mapped.madvise(mmap.MADV_RANDOM)  # no read-ahead: only the rows read are held
        if device.dlpack_device_type() == cpu:
            arrays.append(backend.from_dlpack(arr))
        else:
            arrays.append(backend.tensor(np.asarray(arr), device))
    return arrays
