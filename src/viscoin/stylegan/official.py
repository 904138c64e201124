"""Safe importer of NVIDIA's official StyleGAN2-ADA network pickles (``network-snapshot-*.pkl``).

An official pickle is a plain ``pickle.dump`` of a dict ``{training_set_kwargs, G, D, G_ema,
augment_pipe}`` whose networks are "persistent objects": each one embeds the *source code* of the
module that defined its class, and the official loader ``exec``s that code. Loading such a file with plain ``pickle.load``
or ``torch.load(weights_only=False)`` therefore runs arbitrary code. This module never does that:

* `RestrictedUnpickler` (spec §1.5, §1.6 step 1) maps exactly the allow-list of globals of §1.5 to
  replacements written here and refuses every other global with `UnsafePickleError`, *before*
  anything of it is imported or called. Persistent IDs are refused in the outer stream (§1.4).
* Persistent networks become inert `PersistentRecord`s (§1.2, §1.6 step 2); ``module_src`` is
  dropped unread and never executed. ``torch_utils`` and ``dnnlib`` are never imported.
* Tensor blobs (``torch.storage._load_from_bytes``, a legacy ``torch.save`` stream, §1.4) are parsed
  here, with a second restricted unpickler that only knows the ``torch.*Storage`` type tags. We do
  not hand them to ``torch.load(weights_only=True)``: its restricted unpickler had published bypasses
  (CVE-2025-32434, fixed in torch 2.6, and CVE-2026-24747, fixed in 2.10), and this project allows
  torch >= 2.4.
* numpy scalars (``weight_gain``, ``act_gain``) become Python numbers through our own decoder of
  ``(dtype, raw bytes)``; numpy is not involved.
* Nothing in the file can exhaust the machine: before unpickling, `scan_nesting` walks the opcodes
  and refuses objects nested deeper than `MAX_NESTING` (a deep tuple would crash CPython when
  hashed); after it, `check_object_graph` refuses a container that holds itself, nesting deeper
  than `MAX_NESTING`, or shared containers that would grow past `MAX_EXPANDED` items when copied
  (a 570-byte pickle of a list shared 40 levels deep is 2^40 items), all without recursion.

On top of that, `flatten_state` rebuilds the official ``state_dict()`` names and order (§1.6 step 4),
and `load_official` builds our own `Generator`/`Discriminator` from the stored init kwargs (§1.7,
§2.1), checks the module tree (§1.6 step 6) and the stored plain attributes (§1.3), and copies every
tensor by name with `viscoin.utils.io.copy_named_tensors`, refusing any missing, unexpected or
mis-shaped one. The imported modules are frozen: eval mode, ``requires_grad`` off.

Section numbers (§) refer to ``docs/stylegan2-ada-format.md``, the clean-room description of the
official networks and their checkpoint format in this repository.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import re
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from viscoin.stylegan.config import DiscriminatorConfig, GeneratorConfig
from viscoin.stylegan.discriminator import Discriminator
from viscoin.stylegan.generator import Generator
from viscoin.utils.checkpoint import check_module_size
from viscoin.utils.config import ConfigError
from viscoin.utils.io import copy_named_tensors  # strict copy by name (re-exported)

__all__ = [
    "OfficialPickleError",
    "UnsafePickleError",
    "PersistentRecord",
    "RestrictedUnpickler",
    "OfficialNetworks",
    "read_official_pickle",
    "flatten_state",
    "copy_named_tensors",
    "load_official",
    "load_official_network",
]

PERSISTENCE_VERSION = 6  # internal version of NVIDIA's persistence format (spec §1.2)
_ALLOWED_PROTOCOLS = range(2, 6)
MAX_NESTING = 100          # containers inside containers (an official snapshot has about 15 levels)
MAX_EXPANDED = 1_000_000   # items of the whole pickle, a shared container counted wherever it occurs (~10^4 real)


class OfficialPickleError(ValueError):
    """The file is not a usable StyleGAN2-ADA network pickle. The message names the file."""


class UnsafePickleError(OfficialPickleError, pickle.UnpicklingError):
    """The pickle asks for something outside the StyleGAN2-ADA allow-list (spec §1.5).

    Raised before the refused object is imported or called. It is both an `OfficialPickleError`
    and a `pickle.UnpicklingError`.
    """


# ------------------------------------------------------------------------------------------------
# Inert replacements for the allowed globals
# ------------------------------------------------------------------------------------------------


class _NoBuild:
    """Mixin: refuse the pickle BUILD opcode, which would otherwise overwrite attributes."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"unexpected BUILD state for {type(self).__name__}")


@dataclass(frozen=True, eq=False)
class PersistentRecord(_NoBuild):
    """What a persistent network object becomes: its class name and its ``__dict__`` (spec §1.3).

    Nothing of NVIDIA's class is created; ``module_src`` is dropped without being read.
    """

    class_name: str
    state: dict[str, Any]

    @property
    def parameters(self) -> Mapping[str, torch.Tensor | None]:
        return self.state.get("_parameters") or {}

    @property
    def buffers(self) -> Mapping[str, torch.Tensor | None]:
        return self.state.get("_buffers") or {}

    @property
    def children(self) -> Mapping[str, PersistentRecord | None]:
        return self.state.get("_modules") or {}

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r}, children={list(self.children)})"


class EasyDictRecord(dict):  # type: ignore[type-arg]
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict subclass (no attribute access)."""

    __slots__ = ()


class _NumpyDType(_NoBuild):
    """Stand-in for ``numpy.dtype``: keeps the type code and the byte order of its BUILD state."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str):
            raise UnsafePickleError(f"numpy.dtype: expected a type code string, got {type(code).__name__}")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags).
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"numpy.dtype: unexpected state {state!r}")
        if state[2] is not None or state[3] is not None or state[4] is not None:
            raise UnsafePickleError("numpy.dtype: structured or sub-array dtypes are not supported")
        self.byteorder = state[1]


# numpy type code -> (struct format, Python type). Only plain numbers occur in these networks.
_NUMPY_CODES: dict[str, tuple[str, type]] = {
    "f8": ("d", float), "f4": ("f", float), "f2": ("e", float),
    "i8": ("q", int), "i4": ("i", int), "i2": ("h", int), "i1": ("b", int),
    "u8": ("Q", int), "u4": ("I", int), "u2": ("H", int), "u1": ("B", int),
    "b1": ("?", bool),
}


def numpy_scalar(dtype: Any, raw: Any = None) -> float | int | bool:
    """Decode a pickled numpy scalar ``scalar(dtype, raw_bytes)`` into a Python number."""
    if not isinstance(dtype, _NumpyDType):
        raise UnsafePickleError(f"numpy scalar: expected a dtype, got {type(dtype).__name__}")
    if dtype.code not in _NUMPY_CODES:
        raise UnsafePickleError(f"numpy scalar: unsupported dtype {dtype.code!r}")
    fmt, kind = _NUMPY_CODES[dtype.code]
    if not isinstance(raw, bytes) or len(raw) != struct.calcsize(fmt):
        raise UnsafePickleError(f"numpy scalar: expected {struct.calcsize(fmt)} raw bytes for {dtype.code!r}")
    order = {"<": "<", ">": ">", "|": "<", "=": "<" if sys.byteorder == "little" else ">"}[dtype.byteorder]
    return kind(struct.unpack(order + fmt, raw)[0])


class _Storage(_NoBuild):
    """A typed flat storage: a 1-D CPU tensor holding all its elements."""

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat


# torch storage class -> (dtype, element size in bytes)
_STORAGE_TYPES: dict[str, tuple[torch.dtype, int]] = {
    "FloatStorage": (torch.float32, 4),
    "DoubleStorage": (torch.float64, 8),
    "HalfStorage": (torch.float16, 2),
    "BFloat16Storage": (torch.bfloat16, 2),
    "LongStorage": (torch.int64, 8),
    "IntStorage": (torch.int32, 4),
    "ShortStorage": (torch.int16, 2),
    "CharStorage": (torch.int8, 1),
    "ByteStorage": (torch.uint8, 1),
    "BoolStorage": (torch.bool, 1),
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save stream
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class _StorageType:
    name: str


class _BlobUnpickler(pickle.Unpickler):
    """Reads the small pickles inside a legacy torch.save blob. Knows only ``torch.*Storage``."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(name)
        raise UnsafePickleError(f"refusing global '{module}.{name}' inside a tensor blob")

    def persistent_load(self, pid: Any) -> Any:
        return ("persistent", pid)  # inspected by `parse_storage_blob`


def _load_one(stream: io.BytesIO) -> Any:
    return _BlobUnpickler(stream).load()


def parse_storage_blob(blob: bytes) -> _Storage:
    """Parse the legacy ``torch.save`` stream of one storage (spec §1.4, items 1-6)."""
    if not isinstance(blob, (bytes, bytearray)):
        raise UnsafePickleError(f"tensor blob: expected bytes, got {type(blob).__name__}")
    stream = io.BytesIO(blob)
    if _load_one(stream) != _LEGACY_MAGIC:
        raise OfficialPickleError("tensor blob: not a legacy torch.save stream (bad magic number)")
    if _load_one(stream) != _LEGACY_PROTOCOL:
        raise OfficialPickleError("tensor blob: unsupported legacy protocol version")
    sys_info = _load_one(stream)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise OfficialPickleError(f"tensor blob: only little-endian data is supported (sys_info {sys_info!r})")
    record = _load_one(stream)
    if not (isinstance(record, tuple) and len(record) == 2 and record[0] == "persistent"):
        raise OfficialPickleError("tensor blob: expected a single storage")
    pid = record[1]
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise OfficialPickleError(f"tensor blob: unexpected persistent id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
        raise OfficialPickleError(f"tensor blob: unexpected persistent id {pid!r}")
    keys = _load_one(stream)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise OfficialPickleError("tensor blob: bad storage key list")
    dtype, elsize = _STORAGE_TYPES[storage_type.name]
    flats: dict[str, torch.Tensor] = {}
    for k in keys:
        head = stream.read(8)
        if len(head) != 8:
            raise OfficialPickleError("tensor blob: truncated element count")
        (count,) = struct.unpack("<q", head)
        if count < 0 or count * elsize > len(blob) - stream.tell():
            raise OfficialPickleError("tensor blob: element count exceeds the data present")
        data = bytearray(stream.read(count * elsize))
        flats[k] = torch.frombuffer(data, dtype=dtype) if count else torch.empty(0, dtype=dtype)
    if stream.read(1):
        raise OfficialPickleError("tensor blob: unexpected trailing data")
    if key not in flats or flats[key].numel() != numel:
        raise OfficialPickleError(f"tensor blob: storage {key!r} is missing or does not hold {numel} elements")
    flat = flats[key]
    if view is not None:  # (view_key, offset, size) of a storage view, as older torch wrote them
        if not (isinstance(view, tuple) and len(view) == 3 and view[0] in flats):
            raise OfficialPickleError(f"tensor blob: bad storage view {view!r}")
        _view_key, offset, size = view
        flat = flats[view[0]][offset : offset + size]
    return _Storage(flat)


def _check_ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UnsafePickleError(f"tensor rebuild: {what} must be a tuple of ints, got {value!r}")
    return value


def rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    backward_hooks: Any = None, metadata: Any = None,
) -> torch.Tensor:
    """Replacement of ``torch._utils._rebuild_tensor_v2``: a view of the storage, honouring offset/size/stride."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"tensor rebuild: expected a storage, got {type(storage).__name__}")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    if not isinstance(storage_offset, int) or storage_offset < 0 or len(size) != len(stride):
        raise UnsafePickleError(f"tensor rebuild: bad offset/size/stride {storage_offset!r}, {size}, {stride}")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise UnsafePickleError(f"tensor rebuild: negative size or stride {size}, {stride}")
    if all(s > 0 for s in size):  # otherwise the tensor is empty and reads nothing
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.flat.numel():
            raise OfficialPickleError(
                f"tensor rebuild: view (offset {storage_offset}, size {size}, stride {stride}) "
                f"exceeds its storage of {storage.flat.numel()} elements"
            )
    return torch.as_strided(storage.flat, size, stride, storage_offset)


def rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *state: Any) -> torch.Tensor:
    """Replacement of ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"parameter rebuild: expected a tensor, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------------
# The restricted unpickler
# ------------------------------------------------------------------------------------------------

_META_KEYS = {"type", "version", "module_src", "class_name", "state"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for official StyleGAN2-ADA pickles that maps only the globals of spec §1.5.

    `where` (usually the file name) is used in error messages.
    """

    def __init__(self, file: Any, where: str = "<pickle>") -> None:
        super().__init__(file)
        self.where = where
        self._allowed: dict[tuple[str, str], Callable[..., Any]] = {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): self._reconstruct_persistent_obj,
            ("dnnlib.util", "EasyDict"): EasyDictRecord,
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
            ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
            ("torch.storage", "_load_from_bytes"): parse_storage_blob,
            ("numpy.core.multiarray", "scalar"): numpy_scalar,
            ("numpy._core.multiarray", "scalar"): numpy_scalar,
            ("numpy", "dtype"): _NumpyDType,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
        }

    def find_class(self, module: str, name: str) -> Any:
        replacement = self._allowed.get((module, name))
        if replacement is None:
            raise UnsafePickleError(
                f"refusing global '{module}.{name}' in {self.where}: only the StyleGAN2-ADA allow-list "
                "is accepted (see docs/stylegan2-ada-format.md §1.5); the file may be malicious or not "
                "an official StyleGAN2-ADA network pickle"
            )
        return replacement

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"refusing persistent id in {self.where}: official StyleGAN2-ADA pickles have none (a torch.save file?)"
        )

    def _reconstruct_persistent_obj(self, meta: Any) -> PersistentRecord:
        """Replacement of ``torch_utils.persistence._reconstruct_persistent_obj``; never runs module_src."""
        if not isinstance(meta, dict) or set(meta) != _META_KEYS:
            keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
            raise OfficialPickleError(f"{self.where}: unexpected persistent object meta {keys}")
        if meta["type"] != "class":
            raise OfficialPickleError(
                f"{self.where}: persistent object of type {meta['type']!r}; only 'class' is supported"
            )
        if meta["version"] != PERSISTENCE_VERSION:
            raise OfficialPickleError(
                f"{self.where}: persistent object version {meta['version']!r}; only version "
                f"{PERSISTENCE_VERSION} (stylegan2-ada-pytorch) is supported"
            )
        if not isinstance(meta["class_name"], str) or not isinstance(meta["state"], dict):
            raise OfficialPickleError(f"{self.where}: malformed persistent object meta")
        return PersistentRecord(meta["class_name"], meta["state"])  # module_src is ignored


# ------------------------------------------------------------------------------------------------
# Bounds on what a file may build
# ------------------------------------------------------------------------------------------------

# Opcodes that change the container below their arguments in place (the rest build a new object).
_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


def scan_nesting(file: Any, where: str) -> None:
    """Refuse a pickle stream that nests objects deeper than `MAX_NESTING`, before unpickling it.

    A symbolic run of the pickle machine over `pickletools.genops` (nothing is built): each stack
    entry is a cell holding the nesting height of the object it stands for; an opcode's result is
    one level above the deepest entry it consumes, a memo entry shares its cell. Tuples and
    frozensets (the objects CPython hashes recursively, with no depth limit) are measured exactly;
    for containers filled after being nested, `check_object_graph` has the final word.
    """
    stack: list[list[int]] = []
    marks: list[int] = []
    memo: dict[int, list[int]] = {}
    try:
        for op, arg, _pos in pickletools.genops(file):
            name = op.name
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name in _MEMO_PUT:
                memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
                continue
            if name in _MEMO_GET:
                stack.append(memo[int(arg)])
                continue
            consumed: list[list[int]] = []
            before = op.stack_before
            if pickletools.markobject in before:
                start = marks.pop()
                consumed, stack[start:] = stack[start:], []
                below = before.index(pickletools.markobject)
            else:
                below = len(before)
            if below:
                consumed, stack[-below:] = stack[-below:] + consumed, []
            height = 1 + max((c[0] for c in consumed), default=-1)
            if name in _IN_PLACE:                      # the container keeps its identity (memo sharing)
                cell = consumed[0]
                cell[0] = max(cell[0], height)
            else:
                cell = [height]
            if cell[0] > MAX_NESTING:
                raise OfficialPickleError(
                    f"{where}: objects nested more than {MAX_NESTING} levels deep; refused (a StyleGAN2-ADA "
                    "snapshot nests about 15 levels; the file is corrupt or hostile)"
                )
            stack.extend(cell for _ in op.stack_after)
    except OfficialPickleError:
        raise
    except (ValueError, IndexError, KeyError, TypeError):  # a malformed stream: the unpickler will say why
        return


def _contents(obj: Any) -> Collection[Any] | None:
    """The objects `obj` holds, or None for a leaf (tensor, number, string, bytes, ...)."""
    if isinstance(obj, PersistentRecord):
        return (obj.state,)
    if isinstance(obj, dict):
        return [x for item in obj.items() for x in item]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    return None


def check_object_graph(root: Any, where: str) -> None:
    """Refuse what recursive code could not handle: a container that holds itself, nesting deeper
    than `MAX_NESTING`, or more than `MAX_EXPANDED` items once shared containers are counted at
    every place they occur. Iterative, and linear in the number of distinct containers."""
    size: dict[int, int] = {}        # id -> items below it, with multiplicity (itself included)
    height: dict[int, int] = {}      # id -> containers on the longest path down from it
    on_path: set[int] = set()

    def refuse(why: str) -> OfficialPickleError:
        return OfficialPickleError(f"{where}: {why}; refused (the file is corrupt or hostile)")

    stack: list[list[Any]] = [[root, iter(_contents(root) or ()), 1, 0]]  # obj, children, size, child height
    on_path.add(id(root))
    while stack:
        frame = stack[-1]
        child = next(frame[1], stack)  # the stack itself marks the end (it is never an item)
        if child is stack:
            stack.pop()
            on_path.discard(id(frame[0]))
            size[id(frame[0])], height[id(frame[0])] = frame[2], frame[3] + 1
            if stack:
                stack[-1][2] += frame[2]
                stack[-1][3] = max(stack[-1][3], frame[3] + 1)
        elif _contents(child) is None:
            frame[2] += 1
        elif id(child) in on_path:
            raise refuse("a container holds itself")
        elif id(child) in size:
            frame[2] += size[id(child)]
            frame[3] = max(frame[3], height[id(child)])
            if len(stack) + height[id(child)] > MAX_NESTING:
                raise refuse(f"objects nested more than {MAX_NESTING} levels deep")
        else:
            if len(stack) >= MAX_NESTING:
                raise refuse(f"objects nested more than {MAX_NESTING} levels deep")
            on_path.add(id(child))
            stack.append([child, iter(_contents(child) or ()), 1, 0])
        if stack and stack[-1][2] > MAX_EXPANDED:
            raise refuse(f"more than {MAX_EXPANDED:,} items once its shared containers are copied out")


# ------------------------------------------------------------------------------------------------
# Reading a file
# ------------------------------------------------------------------------------------------------


def read_official_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an official network pickle safely; return its raw top-level dict of records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such StyleGAN2-ADA network pickle")
    with open(path, "rb") as file:
        head = file.read(2)
        if head == b"PK":
            raise OfficialPickleError(
                f"{path} is not a readable StyleGAN2-ADA network pickle: it is a zip archive "
                "(a torch.save checkpoint?)"
            )
        if len(head) < 2 or head[0] != 0x80 or head[1] not in _ALLOWED_PROTOCOLS:
            raise OfficialPickleError(
                f"{path} is not a readable StyleGAN2-ADA network pickle: no pickle header (protocol 2-5) found"
            )
        file.seek(0)
        try:
            scan_nesting(file, str(path))
            file.seek(0)
            result = RestrictedUnpickler(file, where=str(path)).load()
            check_object_graph(result, str(path))
        except OfficialPickleError as exc:
            if str(path) in str(exc):
                raise
            raise type(exc)(f"{path} is not a readable StyleGAN2-ADA network pickle: {exc}") from exc
        except Exception as exc:  # truncated or corrupt data: pickle raises many exception types
            raise OfficialPickleError(
                f"{path} is not a readable StyleGAN2-ADA network pickle: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(result, dict):
        raise OfficialPickleError(
            f"{path} is not a StyleGAN2-ADA network pickle: top level is a {type(result).__name__}, not a dict"
        )
    return result


def flatten_state(record: PersistentRecord, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """The official ``state_dict()`` of a record: names and order (spec §1.6 step 4).

    Parameters first, then persistent buffers, then the children recursively, in insertion order.
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    _flatten_into(record, prefix, out)
    return out


def _flatten_into(record: PersistentRecord, prefix: str, out: OrderedDict[str, torch.Tensor]) -> None:
    if not isinstance(record, PersistentRecord):
        raise OfficialPickleError(f"{prefix or 'root'}: expected a network module record, got {type(record).__name__}")
    skip = record.state.get("_non_persistent_buffers_set") or set()
    entries = list(record.parameters.items()) + [(n, b) for n, b in record.buffers.items() if n not in skip]
    for name, tensor in entries:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise OfficialPickleError(f"{prefix}{name}: expected a tensor, got {type(tensor).__name__}")
        out[prefix + name] = tensor
    for name, child in record.children.items():
        if child is not None:
            _flatten_into(child, f"{prefix}{name}.", out)


def _plain(value: Any) -> Any:
    """EasyDict/OrderedDict -> dict and tuples -> lists, recursively (JSON-like data)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# Checks of the record tree against the config (spec §1.3, §1.6 steps 5-6)
# ------------------------------------------------------------------------------------------------

# (path pattern relative to the network, official class name); first match wins.
_G_CLASSES: list[tuple[str, str]] = [
    (r"", "Generator"),
    (r"mapping", "MappingNetwork"),
    (r"mapping\.(embed|fc\d+)", "FullyConnectedLayer"),
    (r"synthesis", "SynthesisNetwork"),
    (r"synthesis\.b\d+", "SynthesisBlock"),
    (r"synthesis\.b\d+\.conv[01]", "SynthesisLayer"),
    (r"synthesis\.b\d+\.torgb", "ToRGBLayer"),
    (r"synthesis\.b\d+\.(conv[01]|torgb)\.affine", "FullyConnectedLayer"),
    (r"synthesis\.b\d+\.skip", "Conv2dLayer"),
]
_D_CLASSES: list[tuple[str, str]] = [
    (r"", "Discriminator"),
    (r"b4", "DiscriminatorEpilogue"),
    (r"b4\.(fromrgb|conv)", "Conv2dLayer"),
    (r"b4\.(fc|out)", "FullyConnectedLayer"),
    (r"b4\.mbstd", "MinibatchStdLayer"),
    (r"b\d+", "DiscriminatorBlock"),
    (r"b\d+\.(fromrgb|conv0|conv1|skip)", "Conv2dLayer"),
    (r"mapping", "MappingNetwork"),
    (r"mapping\.(embed|fc\d+)", "FullyConnectedLayer"),
]

# Plain attributes compared with our module's attribute of the same name, where it has one.
_SHARED_ATTRS = (
    "z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "num_ws", "num_layers", "w_avg_beta",
    "block_resolutions", "resolution", "in_channels", "is_last", "architecture", "use_fp16", "num_conv",
    "num_torgb", "up", "down", "use_noise", "conv_clamp", "activation", "cmap_dim",
)


def _walk(record: PersistentRecord, path: str = "") -> list[tuple[str, PersistentRecord]]:
    items = [(path, record)]
    for name, child in record.children.items():
        if child is not None:
            sub = f"{path}.{name}" if path else name
            if not isinstance(child, PersistentRecord):
                raise OfficialPickleError(f"{sub}: expected a network module record, got {type(child).__name__}")
            items += _walk(child, sub)
    return items


def _check_classes(root: PersistentRecord, rules: list[tuple[str, str]], where: str) -> None:
    for path, rec in _walk(root):
        expected = next((cls for pattern, cls in rules if re.fullmatch(pattern, path)), None)
        if expected is None:
            raise OfficialPickleError(
                f"{where}: unexpected submodule '{path}' ({rec.class_name}); not a StyleGAN2-ADA network "
                "(a StyleGAN3 or other modified pickle?)"
            )
        if rec.class_name != expected:
            raise OfficialPickleError(
                f"{where}: submodule '{path or '<root>'}' is a {rec.class_name}, expected a StyleGAN2-ADA "
                f"{expected} (a StyleGAN3 or other modified pickle?)"
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)
    return bool(a == b)


def _expect_attrs(record: PersistentRecord | None, path: str, expected: dict[str, Any], where: str) -> None:
    """Compare stored plain attributes with the values derived from the config (only those stored)."""
    if record is None:
        return
    for name, want in expected.items():
        if name in record.state and not _same(record.state[name], want):
            raise OfficialPickleError(
                f"{where}: stored attribute {path or '<root>'}.{name} = {record.state[name]!r} disagrees "
                f"with the value {want!r} derived from the init kwargs"
            )


def _fp16_resolution(img_resolution: int, num_fp16_res: int) -> int:
    return max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)


def _check_generator_record(rec: PersistentRecord, cfg: GeneratorConfig, where: str) -> None:
    _check_classes(rec, _G_CLASSES, where)
    top = {k: getattr(cfg, k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")}
    _expect_attrs(rec, "", {**top, "num_ws": cfg.num_ws}, where)
    mapping, synthesis = rec.children.get("mapping"), rec.children.get("synthesis")
    _expect_attrs(mapping, "mapping", {
        "z_dim": cfg.z_dim, "c_dim": cfg.c_dim, "w_dim": cfg.w_dim, "num_ws": cfg.num_ws,
        "num_layers": cfg.mapping.num_layers, "w_avg_beta": cfg.mapping.w_avg_beta,
    }, where)
    resolutions = [2**i for i in range(2, int(math.log2(cfg.img_resolution)) + 1)]
    _expect_attrs(synthesis, "synthesis", {
        "w_dim": cfg.w_dim, "img_resolution": cfg.img_resolution, "img_channels": cfg.img_channels,
        "block_resolutions": resolutions, "num_ws": cfg.num_ws,
    }, where)
    if synthesis is None:
        return
    fp16_res = _fp16_resolution(cfg.img_resolution, cfg.synthesis.num_fp16_res)
    for r in resolutions:
        _expect_attrs(synthesis.children.get(f"b{r}"), f"synthesis.b{r}", {
            "resolution": r, "in_channels": 0 if r == 4 else cfg.channels(r // 2),
            "architecture": cfg.synthesis.architecture, "use_fp16": r >= fp16_res and r > 4,
            "is_last": r == cfg.img_resolution,
        }, where)


def _check_discriminator_record(rec: PersistentRecord, cfg: DiscriminatorConfig, where: str) -> None:
    _check_classes(rec, _D_CLASSES, where)
    top = {k: getattr(cfg, k) for k in ("c_dim", "img_resolution", "img_channels")}
    _expect_attrs(rec, "", top, where)
    fp16_res = _fp16_resolution(cfg.img_resolution, cfg.num_fp16_res)
    r = cfg.img_resolution
    while r > 4:
        _expect_attrs(rec.children.get(f"b{r}"), f"b{r}", {
            "resolution": r, "architecture": cfg.architecture, "use_fp16": r >= fp16_res,
            "in_channels": 0 if r == cfg.img_resolution else cfg.channels(r),
        }, where)
        r //= 2
    _expect_attrs(rec.children.get("b4"), "b4", {
        "resolution": 4, "architecture": cfg.architecture, "cmap_dim": cfg.resolved_cmap_dim,
    }, where)


def _check_module_attrs(rec: PersistentRecord, module: nn.Module, where: str) -> None:
    """Compare the record's plain attributes with our module's attributes of the same name."""
    for path, sub in _walk(rec):
        try:
            ours = module.get_submodule(path) if path else module
        except AttributeError:
            continue  # tensor names are checked separately
        for name in _SHARED_ATTRS:
            if name not in sub.state or not hasattr(ours, name):
                continue
            mine, stored = getattr(ours, name), sub.state[name]
            if isinstance(mine, (bool, int, float, str, list, tuple, type(None))) and not _same(mine, stored):
                raise OfficialPickleError(
                    f"{where}: stored attribute {path or '<root>'}.{name} = {stored!r} but our "
                    f"{type(ours).__name__} has {mine!r}"
                )


# ------------------------------------------------------------------------------------------------
# Building our networks
# ------------------------------------------------------------------------------------------------


def _init_kwargs(rec: PersistentRecord, where: str) -> dict[str, Any]:
    args, kwargs = rec.state.get("_init_args", ()), rec.state.get("_init_kwargs")
    if args not in ((), []):
        raise OfficialPickleError(f"{where}: positional init arguments {args!r} are not supported")
    if not isinstance(kwargs, dict):
        raise OfficialPickleError(f"{where}: no init kwargs stored")
    return _plain(kwargs)


def _network_record(
    data: dict[str, Any], key: str, class_name: str, path: Path, required: bool
) -> PersistentRecord | None:
    value = data.get(key)
    if value is None:
        if required:
            raise OfficialPickleError(
                f"{path}: no '{key}' network in this pickle (keys: {sorted(map(str, data))}); "
                "is it a StyleGAN2-ADA network snapshot?"
            )
        return None
    if not isinstance(value, PersistentRecord) or value.class_name != class_name:
        got = value.class_name if isinstance(value, PersistentRecord) else type(value).__name__
        raise OfficialPickleError(f"{path}: '{key}' is a {got}, expected a StyleGAN2-ADA {class_name}")
    return value


def _generator_config(rec: PersistentRecord, where: str) -> GeneratorConfig:
    try:
        return GeneratorConfig.from_official(_init_kwargs(rec, where), where=f"{where} init kwargs")
    except ConfigError as exc:
        raise OfficialPickleError(f"{where}: not the init kwargs of a StyleGAN2-ADA Generator: {exc}") from exc


def _discriminator_config(rec: PersistentRecord, where: str) -> DiscriminatorConfig:
    try:
        return DiscriminatorConfig.from_official(_init_kwargs(rec, where), where=f"{where} init kwargs")
    except ConfigError as exc:
        raise OfficialPickleError(f"{where}: not the init kwargs of a StyleGAN2-ADA Discriminator: {exc}") from exc


def _build(factory: Callable[[Any], nn.Module], cfg: Any, rec: PersistentRecord, where: str, device: Any) -> nn.Module:
    check_module_size(lambda: factory(cfg), f"{where} init kwargs")
    module = factory(cfg)
    copy_named_tensors(module, flatten_state(rec), where)
    _check_module_attrs(rec, module, where)
    module.eval().requires_grad_(False)  # frozen imports
    return module.to(device)


@dataclass
class OfficialNetworks:
    """The networks of an official snapshot, as our modules (frozen, eval mode)."""

    G: nn.Module | None                          # generator at the snapshot instant (None if absent/not built)
    G_ema: nn.Module | None                      # moving-average generator: the one to use
    D: nn.Module | None                          # discriminator (None if absent/not built)
    G_config: GeneratorConfig
    D_config: DiscriminatorConfig | None
    augment_p: float | None                      # ADA probability p of the AugmentPipe, None if no pipe
    training_set_kwargs: dict[str, Any] | None


def _augment_p(data: dict[str, Any], path: Path) -> float | None:
    pipe = data.get("augment_pipe")
    if pipe is None:
        return None
    if not isinstance(pipe, PersistentRecord) or pipe.class_name != "AugmentPipe":
        raise OfficialPickleError(f"{path}: 'augment_pipe' is not a StyleGAN2-ADA AugmentPipe")
    p = pipe.buffers.get("p")  # registered as a scalar buffer of the pipe
    if not isinstance(p, torch.Tensor) or p.numel() != 1:
        raise OfficialPickleError(f"{path}: the AugmentPipe has no scalar buffer 'p'")
    return float(p.item())


def load_official(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    include: Collection[str] = ("G", "G_ema", "D"),
) -> OfficialNetworks:
    """Load an official StyleGAN2-ADA snapshot into our `Generator`/`Discriminator` modules.

    `include` picks the networks to build (the configs are always read); the others are None.
    """
    path = Path(path)
    unknown = set(include) - {"G", "G_ema", "D"}
    if unknown:
        raise ValueError(f"include: unknown network(s) {sorted(unknown)}; expected some of G, G_ema, D")
    data = read_official_pickle(path)
    g_ema = _network_record(data, "G_ema", "Generator", path, required=True)
    assert g_ema is not None
    g = _network_record(data, "G", "Generator", path, required=False)
    d = _network_record(data, "D", "Discriminator", path, required=False)

    g_config = _generator_config(g_ema, f"{path}: G_ema")
    _check_generator_record(g_ema, g_config, f"{path}: G_ema")
    if g is not None:
        if _generator_config(g, f"{path}: G") != g_config:
            raise OfficialPickleError(f"{path}: G and G_ema have different init kwargs")
        _check_generator_record(g, g_config, f"{path}: G")
    d_config = None
    if d is not None:
        d_config = _discriminator_config(d, f"{path}: D")
        _check_discriminator_record(d, d_config, f"{path}: D")

    def build(key: str, rec: PersistentRecord | None, factory: Any, cfg: Any) -> nn.Module | None:
        if rec is None or key not in include:
            return None
        return _build(factory, cfg, rec, f"{path}: {key}", device)

    augment_p = _augment_p(data, path)
    tsk = data.get("training_set_kwargs")
    return OfficialNetworks(
        G=build("G", g, Generator, g_config),
        G_ema=build("G_ema", g_ema, Generator, g_config),
        D=build("D", d, Discriminator, d_config),
        G_config=g_config,
        D_config=d_config,
        augment_p=augment_p,
        training_set_kwargs=_plain(tsk) if isinstance(tsk, dict) else None,
    )


def load_official_network(
    path: str | os.PathLike[str],
    which: Literal["G_ema", "G", "D"] = "G_ema",
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, GeneratorConfig | DiscriminatorConfig]:
    """One network of an official snapshot and its config, e.g. ``G, cfg = load_official_network(pkl)``."""
    if which not in ("G_ema", "G", "D"):
        raise ValueError(f"which: expected 'G_ema', 'G' or 'D', got {which!r}")
    nets = load_official(path, device=device, include=(which,))
    module = getattr(nets, which)
    if module is None:
        raise OfficialPickleError(f"{path}: no '{which}' network in this pickle")
    config = nets.D_config if which == "D" else nets.G_config
    assert config is not None
    return module, config
