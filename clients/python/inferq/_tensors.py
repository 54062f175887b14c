"""V2 tensors <-> numpy arrays, in the JSON and binary forms of the Open
Inference Protocol v2."""

from __future__ import annotations

import json
import struct
from typing import Any, Iterable, Mapping

import numpy as np

# V2 datatype -> numpy dtype (little-endian). BYTES are object arrays of
# bytes.
DTYPES: dict[str, Any] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


def datatype_of(a: np.ndarray) -> str:
    """The V2 datatype of a numpy array: strings and bytes are BYTES."""
    if a.dtype.kind in ("U", "S", "O"):
        return "BYTES"
    for name, dt in DTYPES.items():
        if a.dtype.newbyteorder("<") == dt or a.dtype == dt:
            return name
    raise TypeError(f"numpy dtype {a.dtype} has no V2 datatype; convert the array first")


def _bytes_elements(a: np.ndarray) -> list[bytes]:
    out = []
    for e in a.reshape(-1):
        if isinstance(e, (bytes, np.bytes_)):
            out.append(bytes(e))
        elif isinstance(e, str):
            out.append(e.encode("utf-8"))
        else:
            raise TypeError(f"a BYTES element must be str or bytes, not {type(e).__name__}")
    return out


def encode_binary(inputs: Mapping[str, Any], outputs: Iterable[str] | None = None,
                  request_id: str | None = None, parameters: Mapping[str, Any] | None = None) -> tuple[bytes, int]:
    """A V2 binary request: the JSON header, whose inputs carry
    binary_data_size, then each input's raw little-endian bytes (BYTES as
    4-byte length-prefixed elements). Returns the body and the header's
    length, for the Inference-Header-Content-Length header."""
    header: dict[str, Any] = {"inputs": []}
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = dict(parameters)
    chunks = []
    for name, value in inputs.items():
        a = np.asarray(value)
        dt = datatype_of(a)
        if dt == "BYTES":
            raw = b"".join(struct.pack("<I", len(e)) + e for e in _bytes_elements(a))
        else:
            raw = np.ascontiguousarray(a, dtype=DTYPES[dt]).tobytes()
        header["inputs"].append({"name": name, "shape": list(a.shape), "datatype": dt,
                                 "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    if outputs:
        header["outputs"] = [{"name": o} for o in outputs]
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(chunks), len(head)


def _float(v: Any) -> float:
    return float(v)  # "NaN", "Infinity" and "-Infinity" as the server writes them


def decode_tensor(t: Mapping[str, Any]) -> np.ndarray:
    """A numpy array of a V2 JSON tensor {name, shape, datatype, data}."""
    dt, shape, data = t["datatype"], t["shape"], t.get("data", [])
    if dt == "BYTES":
        flat = [d.encode("utf-8") if isinstance(d, str) else bytes(d) for d in _flatten(data)]
        a = np.empty(len(flat), dtype=object)
        a[:] = flat
        return a.reshape(shape)
    if dt not in DTYPES:
        raise ValueError(f"tensor {t.get('name')!r}: unknown datatype {dt!r}")
    flat = list(_flatten(data))
    if dt.startswith("FP"):
        flat = [_float(v) for v in flat]
    return np.array(flat, dtype=DTYPES[dt]).reshape(shape)


def _flatten(data: Any) -> Iterable[Any]:
    for d in data:
        if isinstance(d, list):
            yield from _flatten(d)
        else:
            yield d


def decode_response(body: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The outputs of a V2 response, by name."""
    return {o["name"]: decode_tensor(o) for o in body.get("outputs", [])}


def decode_binary_response(body: bytes, header_len: int) -> dict[str, np.ndarray]:
    """The outputs of a V2 response in the binary tensor extension: a JSON
    header of ``header_len`` bytes, whose binary outputs carry
    binary_data_size, then their raw little-endian bytes in order."""
    if not 0 <= header_len <= len(body):
        raise ValueError(f"header length {header_len} is outside the {len(body)} bytes of the response")
    header = json.loads(body[:header_len])
    data = memoryview(body)[header_len:]
    out = {}
    for t in header.get("outputs", []):
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[t["name"]] = decode_tensor(t)
            continue
        if size > len(data):
            raise ValueError(f"output {t['name']!r}: binary_data_size {size} exceeds the {len(data)} bytes left")
        raw, data = bytes(data[:size]), data[size:]
        dt, shape = t["datatype"], t["shape"]
        if dt == "BYTES":
            elems, i = [], 0
            while i < len(raw):
                (n,) = struct.unpack_from("<I", raw, i)
                elems.append(raw[i + 4:i + 4 + n])
                i += 4 + n
            a = np.empty(len(elems), dtype=object)
            a[:] = elems
            out[t["name"]] = a.reshape(shape)
        elif dt in DTYPES:
            out[t["name"]] = np.frombuffer(raw, dtype=DTYPES[dt]).reshape(shape)
        else:
            raise ValueError(f"tensor {t['name']!r}: unknown datatype {dt!r}")
    if len(data):
        raise ValueError(f"{len(data)} bytes of binary data follow the last binary output")
    return out
