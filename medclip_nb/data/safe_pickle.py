"""Reading `datasets.pkl` without trusting it.

Why a pure-Python unpickler and not the C one with an allow-list (what this replaced): the C
unpickler hands the allowed NumPy callables (`_reconstruct`, `ndarray.__setstate__`,
`dtype.__setstate__`) whatever the file says, and those run C code on it. A crafted file set a
void dtype's flags so that file bytes were read as object pointers (a segfault), made
`Unpickler.load()` itself raise SystemError, or asked `_reconstruct` for gigabytes the file
never held. A child process with resource limits would stop the damage but not the wrong data,
and costs a process start on every load. Here instead:

- the opcodes are read by Python's own pure-Python unpickler (`pickle._Unpickler`: a loop, no
  recursion, reads bounded by the file), with every opcode that could call or import anything
  replaced: only the names in `SAFE_GLOBALS` resolve, and they resolve to stand-ins defined
  here, never to the NumPy functions themselves;
- an array is rebuilt only from a vetted tuple: a shape of non-negative ints whose product is
  at most `MAX_ARRAY_ELEMENTS`, a plain dtype (bool, ints, floats, complex, fixed-width
  strings) whose whole pickled state equals what NumPy itself writes for that dtype, and raw
  bytes of exactly `elements * itemsize` (so no allocation exceeds what the file holds);
- every opcode is charged what it allocates (a container, a memo entry, a number: tens of
  bytes from one input byte) and the file is refused once the charges pass
  `MAX_BYTES_PER_INPUT_BYTE` times its size: a file of nothing but `}` or `(` cannot turn 5 MB
  into gigabytes of empty dicts or marks;
- the result is walked once (iteratively): containers nested deeper than `MAX_DEPTH`,
  self-containing ones and integers wider than 64 bits are refused, and its size is counted with
  every shared reference expanded (what a JSON Lines manifest of it would hold): a 1 MB file of
  references to one long string refuses to become a gigabyte of records
  (`MAX_EXPANSION_PER_INPUT_BYTE`).

Memory is therefore bounded by a small multiple of the file size, and any failure is a
`DataError` of one line. The cost is speed: about 5 s per 100,000 records (measured on a shared
CPU core; the C unpickler takes 0.3-0.8 s); convert a large
pickle once to a JSON Lines manifest (`python -m medclip_nb convert`).
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from medclip_nb.errors import DataError, one_line
from medclip_nb.files import read_limited

MAX_ARRAY_ELEMENTS = 16_000_000
MAX_PICKLE_BYTES = 4 << 30  # MIMIC-CXR's whole datasets.pkl is about 150 MB
MAX_DEPTH = 64
MAX_INT_BITS = 64
# What reading may allocate per byte of the file (plus a fixed allowance for small files): a
# dataset pickle costs about 10 (strings and records), one of nothing but `}` would cost 72.
MAX_BYTES_PER_INPUT_BYTE, BYTES_ALLOWANCE = 40, 64 << 20
# The records' size with shared references expanded, per byte of the file: a dataset pickle
# shares its dict keys (about 3); beyond this it is a reference bomb.
MAX_EXPANSION_PER_INPUT_BYTE, EXPANSION_ALLOWANCE = 32, 64 << 20

# The memory an opcode allocates (CPython 3.11, rounded up): a new container or mark, a memo
# entry, a number, a string's or bytes' object header (its data is counted as the file's bytes).
_CHARGES = {
    **dict.fromkeys("EMPTY_LIST EMPTY_DICT EMPTY_SET EMPTY_TUPLE FROZENSET LIST DICT MARK TUPLE TUPLE1 TUPLE2 TUPLE3 "
                    "GLOBAL STACK_GLOBAL REDUCE BUILD".split(), 72),
    **dict.fromkeys("MEMOIZE PUT BINPUT LONG_BINPUT".split(), 96),
    **dict.fromkeys("BINFLOAT FLOAT BININT BININT1 BININT2 INT LONG LONG1 LONG4".split(), 32),
    **dict.fromkeys("BINUNICODE SHORT_BINUNICODE BINUNICODE8 UNICODE BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8 "
                    "BINSTRING SHORT_BINSTRING STRING".split(), 64),
}

SAFE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "bytes"),
        ("builtins", "complex"),
    }
)

_OPCODE_NAMES = {code[0]: name for name, code in vars(pickle).items()
                 if isinstance(code, bytes) and len(code) == 1 and name.isupper()}
# Dtype codes NumPy writes for plain data; everything else (object, void, records, datetimes)
# is refused.
_PLAIN_DTYPE = re.compile(r"(b1|[iu][1248]|f[248]|c(8|16)|[US][1-9][0-9]{0,5})")


class _Refused(Exception):
    """Raised inside the stand-ins; becomes the DataError's reason."""


class _PendingDtype:
    """`numpy.dtype(code, False, True)` before its BUILD; `.value` is the real dtype after."""

    __hash__ = None  # type: ignore[assignment]  # never a dict key or set member

    def __init__(self, code: Any):
        if not isinstance(code, str) or not _PLAIN_DTYPE.fullmatch(code):
            raise _Refused(f"dtype {str(code)[:20]!r} is not a plain numeric or string dtype")
        self.code = code
        self.value: np.dtype | None = None

    def build(self, state: Any) -> None:
        if self.value is not None:
            raise _Refused("dtype built twice")
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise _Refused("malformed dtype state")
        dtype = np.dtype(self.code)
        if state[1] in "<>" and dtype.byteorder != "|":
            dtype = dtype.newbyteorder(state[1])
        # The whole state must be exactly what NumPy writes for this plain dtype: no flags,
        # fields, subarrays or sizes of the file's choosing.
        if state != dtype.__reduce__()[2]:
            raise _Refused(f"dtype state {one_line(repr(state), 60)} is not that of a plain '{self.code}'")
        self.value = dtype


def _built_dtype(value: Any) -> np.dtype:
    if not isinstance(value, _PendingDtype) or value.value is None:
        raise _Refused("an array or scalar without a vetted dtype")
    return value.value


def _array_from_bytes(raw: Any, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise _Refused("array shape must be a tuple of non-negative integers")
    elements = 1
    for n in shape:
        elements *= n
    if elements > MAX_ARRAY_ELEMENTS:
        raise _Refused(f"array of {elements} elements (limit {MAX_ARRAY_ELEMENTS})")
    if isinstance(raw, str):  # protocol 2 writes bytes as latin-1 text
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused("array data must be bytes")
    if len(raw) != elements * dtype.itemsize:
        raise _Refused(f"array data holds {len(raw)} bytes, shape and dtype need {elements * dtype.itemsize}")
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


class _PendingArray:
    """`_reconstruct(ndarray, (0,), b'b')` before its BUILD; `.value` is the array after."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self):
        self.value: np.ndarray | None = None

    def build(self, state: Any) -> None:
        if self.value is not None:
            raise _Refused("array built twice")
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1 or not isinstance(state[3], bool):
            raise _Refused("malformed array state")
        _version, shape, dtype, fortran, raw = state
        self.value = _array_from_bytes(raw, _built_dtype(dtype), shape, fortran)


_NDARRAY = object()  # what the name numpy.ndarray resolves to: a token, usable only below


def _reconstruct(cls: Any, shape: Any, code: Any) -> _PendingArray:
    if cls is not _NDARRAY or shape != (0,) or code not in (b"b", "b"):
        raise _Refused("_reconstruct is only allowed as NumPy writes it for an ndarray")
    return _PendingArray()


def _dtype(code: Any, align: Any = False, copy: Any = True) -> _PendingDtype:
    if align is not False or copy is not True:
        raise _Refused("dtype with unusual arguments")
    return _PendingDtype(code)


def _scalar(dtype: Any, raw: Any = None) -> np.generic:
    return _array_from_bytes(raw, _built_dtype(dtype), (), False)[()]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if order not in ("C", "F"):
        raise _Refused("array order must be 'C' or 'F'")
    dtype = dtype if isinstance(dtype, np.dtype) else _built_dtype(dtype)
    return _array_from_bytes(buf, dtype, shape, order == "F")


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin-1")


def _ordered_dict(*args: Any) -> dict:
    if args:
        raise _Refused("OrderedDict with arguments")
    return {}  # filled by SETITEMS; a plain dict keeps the order too


def _plain_builder(kind: type):
    def build(*args: Any) -> Any:
        if kind is complex:
            if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) or len(args) > 2:
                raise _Refused("complex() of non-numbers")
        elif len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset, bytes, bytearray, str))):
            raise _Refused(f"{kind.__name__}() of unusual arguments")
        if kind in (bytes, bytearray) and len(args) == 1 and isinstance(args[0], str):
            raise _Refused(f"{kind.__name__}() of text")
        return kind(*args)

    return build


_STAND_INS = {
    "ndarray": _NDARRAY,
    "dtype": _dtype,
    "_reconstruct": _reconstruct,
    "scalar": _scalar,
    "_frombuffer": _frombuffer,
    "encode": _codecs_encode,
    "OrderedDict": _ordered_dict,
    "set": _plain_builder(set),
    "frozenset": _plain_builder(frozenset),
    "bytearray": _plain_builder(bytearray),
    "bytes": _plain_builder(bytes),
    "complex": _plain_builder(complex),
}
_CALLABLE = frozenset(id(v) for k, v in _STAND_INS.items() if k != "ndarray")


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler with every calling or importing opcode replaced."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, source: str):
        super().__init__(io.BytesIO(data))
        self._source = source
        self._budget = MAX_BYTES_PER_INPUT_BYTE * len(data) + BYTES_ALLOWANCE

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        if (module, name) not in SAFE_GLOBALS:
            raise DataError(
                f"{self._source}: refused to load: forbidden global "
                f"'{one_line(module, 60)}.{one_line(name, 60)}' (only plain data is allowed)"
            )
        return _STAND_INS[name]

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in _CALLABLE or not isinstance(args, tuple):
            raise _Refused("REDUCE of something other than an allowed NumPy/builtin name")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, (_PendingArray, _PendingDtype)):
            raise _Refused(f"BUILD on a {type(target).__name__}")
        target.build(state)

    def _refuse(self) -> None:
        raise _Refused("the file uses an opcode that plain data never needs")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    for _opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.PERSID, pickle.BINPERSID,
                    pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_opcode[0]] = _refuse
    del _opcode


def _charged(handler, cost: int):
    def run(self) -> None:
        self._budget -= cost
        if self._budget < 0:
            raise _Refused(f"it would take more than {MAX_BYTES_PER_INPUT_BYTE} bytes of memory per byte of the file "
                           f"(opcodes that each build a container, a memo entry or a number)")
        handler(self)

    return run


# Only the opcodes that allocate are charged: any other adds one reference (8 bytes) per opcode
# of at least one byte, which bounds itself.
_RestrictedUnpickler.dispatch = {
    key: _charged(handler, _CHARGES[_OPCODE_NAMES[key]]) if _OPCODE_NAMES.get(key) in _CHARGES else handler
    for key, handler in _RestrictedUnpickler.dispatch.items()
}


_ATOMS = (str, bytes, bytearray, float, complex, bool, type(None), np.ndarray, np.generic)


def _atom_size(obj: Any) -> int:
    """What an atom takes in a JSON Lines record, roughly (strings: their length)."""
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj) + 2
    if isinstance(obj, np.ndarray):
        return 8 * obj.size + 2
    return 8


def _finish(root: Any, expansion_limit: int) -> Any:
    """Swap built stand-ins for their values; refuse deep nesting, cycles, huge ints and a result
    whose size with shared references expanded passes `expansion_limit`. Iterative: a hostile
    depth cannot exhaust the Python stack."""
    done: dict[int, tuple[Any, int, int]] = {}  # id -> (value, nesting height, expanded size)
    open_ids: set[int] = set()
    keep_alive = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        obj, leaving = stack.pop()
        key = id(obj)
        if leaving:
            open_ids.discard(key)
            done[key] = _rebuilt(obj, done, expansion_limit)
            continue
        if key in done:
            continue
        if isinstance(obj, int) and not isinstance(obj, bool):
            if obj.bit_length() > MAX_INT_BITS:
                raise _Refused(f"an integer of {obj.bit_length()} bits")
            done[key] = (obj, 0, 8)
        elif isinstance(obj, _ATOMS):
            done[key] = (obj, 0, _atom_size(obj))
        elif isinstance(obj, (_PendingArray, _PendingDtype)):
            if obj.value is None:
                raise _Refused("an array or dtype that was never built")
            done[key] = (obj.value, 0, _atom_size(obj.value))
        elif isinstance(obj, (list, tuple, dict, set, frozenset)):
            if key in open_ids:
                raise _Refused("a container that contains itself")
            open_ids.add(key)
            keep_alive.append(obj)  # ids stay unique while the walk runs
            stack.append((obj, True))
            children = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else list(obj)
            stack.extend((child, False) for child in children)
        else:
            raise _Refused(f"an object of type {type(obj).__name__}")
    return done[id(root)][0]


def _rebuilt(obj: Any, done: dict[int, tuple[Any, int, int]], expansion_limit: int) -> tuple[Any, int, int]:
    def value(child: Any) -> Any:
        return done[id(child)][0]

    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    else:
        children = list(obj)
    height = 1 + max((done[id(c)][1] for c in children), default=0)
    if height > MAX_DEPTH:
        raise _Refused(f"containers nested more than {MAX_DEPTH} deep")
    size = 2 + sum(done[id(c)][2] + 2 for c in children)  # every reference counted: shared ones expand
    if size > expansion_limit:
        raise _Refused(f"with its shared references expanded it holds more than {expansion_limit >> 20} MiB of "
                       f"records ({MAX_EXPANSION_PER_INPUT_BYTE} times the file: a reference bomb)")
    if isinstance(obj, list):
        obj[:] = [value(c) for c in obj]
        return obj, height, size
    if isinstance(obj, dict):
        for k in obj:
            obj[k] = value(obj[k])
        return obj, height, size
    return type(obj)(value(c) for c in obj), height, size


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """The plain data of a pickle file (dicts, lists, tuples, sets, strings, bytes, numbers,
    NumPy arrays and scalars of plain dtypes), or a one-line DataError naming the file."""
    path = Path(path)
    data = read_limited(path, MAX_PICKLE_BYTES, error=DataError)
    try:
        expansion_limit = MAX_EXPANSION_PER_INPUT_BYTE * len(data) + EXPANSION_ALLOWANCE
        return _finish(_RestrictedUnpickler(data, str(path)).load(), expansion_limit)
    except DataError:
        raise
    except _Refused as exc:
        raise DataError(f"{path}: refused to load: {exc}") from None
    except MemoryError:
        raise DataError(f"{path}: not a readable dataset pickle (out of memory while reading it)") from None
    except Exception as exc:  # noqa: BLE001 - pure-Python code of ours: any failure means a bad file
        raise DataError(f"{path}: not a readable dataset pickle ({type(exc).__name__}: {one_line(exc)})") from None
