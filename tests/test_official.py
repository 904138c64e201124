"""The safe importer of official StyleGAN2-ADA pickles (`viscoin.stylegan.official`).

Uses the two mock pickles of ``fixtures/stylegan2_ada/mock_pkl`` (same structure as NVIDIA's
snapshots, placeholder ``module_src``), pickles written here with a small test-only writer, and
hand-crafted malicious pickles. Nothing in these tests unpickles with the plain `pickle` loader.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import MOCK_COND16, MOCK_G32, fixture_config, fixture_order, fixture_tensors, matches_golden
from viscoin.stylegan.config import DiscriminatorConfig, GeneratorConfig
from viscoin.stylegan.discriminator import Discriminator
from viscoin.stylegan.generator import Generator
from viscoin.stylegan.official import (
    EasyDictRecord,
    OfficialPickleError,
    PersistentRecord,
    RestrictedUnpickler,
    UnsafePickleError,
    copy_named_tensors,
    flatten_state,
    load_official,
    load_official_network,
    numpy_scalar,
    parse_storage_blob,
    read_official_pickle,
)

MOCKS = {"g32": MOCK_G32, "cond16": MOCK_COND16}


# ------------------------------------------------------------------------------------------------
# A test-only writer of official-format pickles (never used to load anything)
# ------------------------------------------------------------------------------------------------


class Glob:
    """Stands for the global `module.name`; the writer emits a GLOBAL opcode for it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # save_reduce wants a callable; never called
        raise AssertionError("test placeholder must not be called")


class Call:
    """Pickles as REDUCE(func, args)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


RECONSTRUCT = Glob("torch_utils.persistence", "_reconstruct_persistent_obj")
SAFE_SRC = "raise RuntimeError('module_src of a StyleGAN2-ADA pickle must never be executed')\n"


def _storage_blob(t: torch.Tensor) -> bytes:
    """The legacy torch.save blob torch itself writes when pickling the storage of `t`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated
        func, (blob,) = t.storage().__reduce__()
    assert func.__name__ == "_load_from_bytes"
    return blob


class _Writer(pickle._Pickler):  # type: ignore[name-defined]  # pure-Python pickler: save() can be hooked
    def __init__(self, file: Any, protocol: int, module_src: str) -> None:
        super().__init__(file, protocol=protocol, fix_imports=False)
        self.module_src = module_src
        self.storages: dict[int, Call] = {}

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, Glob):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, PersistentRecord):
            meta = {"type": "class", "version": 6, "module_src": self.module_src,
                    "class_name": obj.class_name, "state": obj.state}
            return (RECONSTRUCT, (meta,))
        if isinstance(obj, EasyDictRecord):
            return (Glob("dnnlib.util", "EasyDict"), (), None, None, iter(obj.items()))
        if isinstance(obj, torch.Tensor):
            ptr = obj.untyped_storage().data_ptr()
            if ptr not in self.storages:  # one storage object per torch storage: the memo shares it
                self.storages[ptr] = Call(Glob("torch.storage", "_load_from_bytes"), _storage_blob(obj))
            args = (self.storages[ptr], obj.storage_offset(), tuple(obj.shape), obj.stride(), False, OrderedDict())
            return (Glob("torch._utils", "_rebuild_tensor_v2"), args)
        return NotImplemented


def write_pickle(obj: Any, path: Path, protocol: int = 4, module_src: str = SAFE_SRC) -> Path:
    buf = io.BytesIO()
    _Writer(buf, protocol, module_src).dump(obj)
    path.write_bytes(buf.getvalue())
    return path


def globals_in(data: bytes) -> set[str]:
    """'module.name' of every GLOBAL / STACK_GLOBAL in a pickle (static scan, nothing runs)."""
    found, strings = set(), []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


# ------------------------------------------------------------------------------------------------
# The mocks: contents
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict[str, dict[str, Any]]:
    return {name: read_official_pickle(path) for name, path in MOCKS.items()}


def test_mock_top_level(raw):
    for data in raw.values():
        assert list(data) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
        assert data["G_ema"].class_name == "Generator" and data["D"].class_name == "Discriminator"
    assert raw["g32"]["augment_pipe"].class_name == "AugmentPipe"
    assert raw["cond16"]["augment_pipe"] is None
    assert "dnnlib" not in sys.modules and "torch_utils" not in sys.modules


@pytest.mark.parametrize("name", ["g32", "cond16"])
def test_flattened_g_ema_equals_official_state_dict(raw, name):
    flat = flatten_state(raw[name]["G_ema"])
    assert list(flat) == fixture_order(name, "state_dict.safetensors")
    ref = fixture_tensors(name, "state_dict.safetensors")
    for key, tensor in flat.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, ref[key]), key


@pytest.mark.parametrize("name", ["g32", "cond16"])
def test_flattened_d_equals_official_state_dict(raw, name):
    flat = flatten_state(raw[name]["D"])
    assert list(flat) == fixture_order(name, "d_state_dict.safetensors")
    ref = fixture_tensors(name, "d_state_dict.safetensors")
    for key, tensor in flat.items():
        assert torch.equal(tensor, ref[key]), key


def test_g_differs_from_g_ema_in_g32_mock(raw):
    g, g_ema = flatten_state(raw["g32"]["G"]), flatten_state(raw["g32"]["G_ema"])
    assert list(g) == list(g_ema)
    assert not torch.equal(g["mapping.fc0.weight"], g_ema["mapping.fc0.weight"])


@pytest.mark.parametrize("name", ["g32", "cond16"])
def test_init_kwargs_equal_fixture_configs(raw, name):
    for key in ("G", "G_ema"):
        state = raw[name][key].state
        assert state["_init_args"] == () and state["_init_kwargs"] == fixture_config(name)
        assert list(state["_init_kwargs"]) == list(fixture_config(name))  # official key order
        assert isinstance(state["_init_kwargs"]["mapping_kwargs"], EasyDictRecord)
    assert raw[name]["D"].state["_init_kwargs"] == fixture_config(name, "d_")


def test_numpy_scalars_become_python_floats(raw):
    for data in raw.values():  # numpy.core (g32) and numpy._core (cond16) spellings
        layer = data["G_ema"].children["synthesis"].children["b8"].children["conv0"]
        assert type(layer.state["act_gain"]) is float and layer.state["act_gain"] == 2**0.5
        fc = data["G_ema"].children["mapping"].children["fc0"]
        assert type(fc.state["weight_gain"]) is float


def test_protocol3_mock_uses_global_opcodes_and_set():
    found = globals_in(MOCK_COND16.read_bytes())
    assert {"builtins.set", "numpy._core.multiarray.scalar"} <= found
    assert "numpy.core.multiarray.scalar" in globals_in(MOCK_G32.read_bytes())


def test_module_src_is_not_kept(raw):
    rec = raw["g32"]["G_ema"]
    assert not hasattr(rec, "module_src") and "module_src" not in rec.state


# ------------------------------------------------------------------------------------------------
# load_official on the mocks: our networks reproduce the goldens
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nets():
    return {name: load_official(path) for name, path in MOCKS.items()}


@pytest.mark.parametrize("name", ["g32", "cond16"])
def test_load_official_configs_and_extras(nets, name):
    n = nets[name]
    assert n.G_config == GeneratorConfig.from_official(fixture_config(name))
    assert n.D_config == DiscriminatorConfig.from_official(fixture_config(name, "d_"))
    assert isinstance(n.G_ema, Generator) and isinstance(n.G, Generator) and isinstance(n.D, Discriminator)
    assert n.augment_p == (0.125 if name == "g32" else None)
    assert n.training_set_kwargs["resolution"] == (32 if name == "g32" else 16)
    assert n.training_set_kwargs["use_labels"] is (name == "cond16")
    for module in (n.G, n.G_ema, n.D):
        assert not module.training and not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("name", ["g32", "cond16"])
def test_load_official_g_ema_reproduces_goldens(nets, name):
    G = nets[name].G_ema
    gold = fixture_tensors(name, "golden.safetensors")
    c = gold.get("c")
    with torch.no_grad():
        ws = G.mapping(gold["z"], c, truncation_psi=1)
        assert matches_golden(ws, gold["ws_psi1"])
        assert matches_golden(G.mapping(gold["z"], c, truncation_psi=0.7), gold["ws_psi0p7"])
        img = G.synthesis(gold["ws_psi1"], noise_mode="const")
    torch.testing.assert_close(img, gold["img_psi1_const"], atol=1e-5, rtol=0)


def test_load_official_g_is_not_g_ema(nets):
    gold = fixture_tensors("g32", "golden.safetensors")
    with torch.no_grad():
        assert not torch.equal(nets["g32"].G.mapping(gold["z"], None), gold["ws_psi1"])


@pytest.mark.parametrize("name", ["g32", "cond16"])
def test_load_official_d_reproduces_logits(nets, name):
    gold = fixture_tensors(name, "d_golden.safetensors")
    with torch.no_grad():
        logits = nets[name].D(gold["img"], gold.get("c"))
    torch.testing.assert_close(logits, gold["logits"], atol=1e-5, rtol=0)


def test_load_official_network_which():
    G, cfg = load_official_network(MOCK_G32)
    assert isinstance(G, Generator) and cfg == GeneratorConfig.from_official(fixture_config("g32"))
    ref = fixture_tensors("g32", "state_dict.safetensors")
    assert torch.equal(G.state_dict()["mapping.fc0.weight"], ref["mapping.fc0.weight"])
    G_raw, _ = load_official_network(MOCK_G32, "G")
    assert not torch.equal(G_raw.state_dict()["mapping.fc0.weight"], ref["mapping.fc0.weight"])
    D, dcfg = load_official_network(MOCK_COND16, which="D")
    assert isinstance(D, Discriminator) and dcfg.c_dim == 3
    with pytest.raises(ValueError, match="which"):
        load_official_network(MOCK_G32, which="augment_pipe")  # type: ignore[arg-type]


def test_load_official_include_builds_only_requested():
    n = load_official(MOCK_G32, include=("G_ema",))
    assert n.G is None and n.D is None and n.G_ema is not None and n.D_config is not None


# ------------------------------------------------------------------------------------------------
# Round trip through the test writer, and tampered files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [3, 4])
def test_round_trip_through_writer(raw, tmp_path, protocol):
    path = write_pickle(raw["cond16"], tmp_path / "rt.pkl", protocol=protocol)
    again = read_official_pickle(path)
    for key in ("G", "G_ema", "D"):
        a, b = flatten_state(raw["cond16"][key]), flatten_state(again[key])
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    if protocol == 3:
        assert "builtins.set" in globals_in(path.read_bytes())


def test_malicious_module_src_is_never_executed(raw, tmp_path):
    marker = tmp_path / "pwned"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    path = write_pickle(raw["g32"], tmp_path / "evil-src.pkl", module_src=src)
    assert src.encode() in path.read_bytes()
    n = load_official(path)
    assert not marker.exists()
    gold = fixture_tensors("g32", "golden.safetensors")
    with torch.no_grad():
        assert matches_golden(n.G_ema.mapping(gold["z"], None), gold["ws_psi1"])


def _tampered(tmp_path: Path, edit) -> Path:
    data = read_official_pickle(MOCK_G32)  # a fresh copy to edit
    edit(data)
    return write_pickle(data, tmp_path / "tampered.pkl")


def _child(rec: PersistentRecord, dotted: str) -> PersistentRecord:
    for part in dotted.split("."):
        rec = rec.children[part]
    return rec


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["G_ema"].state.__setitem__("num_ws", 9), "<root>.num_ws = 9"),
        (lambda d: _child(d["G_ema"], "synthesis.b16").state.__setitem__("use_fp16", False), "b16.use_fp16 = False"),
        (lambda d: _child(d["G_ema"], "synthesis.b8.conv0").state.__setitem__("up", 1),
         "conv0.up = 1 but our SynthesisLayer has 2"),
        (lambda d: object.__setattr__(_child(d["G_ema"], "synthesis.b8.conv0"), "class_name", "SynthesisLayer3"),
         "SynthesisLayer3"),
        (lambda d: _child(d["G_ema"], "synthesis").children.__setitem__("input", PersistentRecord("SynthesisInput", {})),
         "synthesis.input"),
        (lambda d: d["G_ema"].state["_init_kwargs"]["synthesis_kwargs"].__setitem__("magnitude_ema_beta", 0.999),
         "magnitude_ema_beta"),
        (lambda d: d["G"].state["_init_kwargs"].__setitem__("img_channels", 1), "different init kwargs"),
        (lambda d: d.__setitem__("augment_pipe", PersistentRecord("Generator", {})), "AugmentPipe"),
        (lambda d: d.__setitem__("G_ema", {"not": "a record"}), "expected a StyleGAN2-ADA Generator"),
        (lambda d: d.__delitem__("G_ema"), "no 'G_ema'"),
    ],
)
def test_tampered_records_are_refused(tmp_path, edit, message):
    path = _tampered(tmp_path, edit)
    with pytest.raises(OfficialPickleError, match=message) as info:
        load_official(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: _child(d["G_ema"], "mapping.fc1").parameters.pop("bias"), "missing.*mapping.fc1.bias"),
        (lambda d: _child(d["G_ema"], "mapping").buffers.__setitem__("extra", torch.zeros(2)),
         "unexpected.*mapping.extra"),
        (lambda d: _child(d["G_ema"], "mapping.fc1").parameters.__setitem__("bias", torch.zeros(3)),
         r"mapping.fc1.bias"),
    ],
)
def test_tensor_mismatches_are_refused(tmp_path, edit, message):
    path = _tampered(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        load_official(path)


def test_copy_named_tensors_is_strict():
    lin = torch.nn.Linear(3, 2)
    good = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    copy_named_tensors(lin, good, "here")
    assert torch.equal(lin.weight, torch.ones(2, 3))
    for bad, word in [({"weight": torch.ones(2, 3)}, "bias"),
                      ({**good, "extra": torch.ones(1)}, "extra"),
                      ({**good, "bias": torch.zeros(3)}, "bias")]:
        with pytest.raises(ValueError, match=word):
            copy_named_tensors(lin, bad, "here")


# ------------------------------------------------------------------------------------------------
# Malicious pickles
# ------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


def _payloads(marker: Path) -> list[tuple[str, Any]]:
    return [
        (f"{os.system.__module__}.system", _Evil(os.system, f"touch {marker}")),
        ("builtins.eval", _Evil(eval, f"open({str(marker)!r}, 'w').close()")),
        ("builtins.exec", _Evil(exec, f"open({str(marker)!r}, 'w').close()")),
        ("subprocess.Popen", _Evil(subprocess.Popen, ["touch", str(marker)])),
        ("posix.system", Call(Glob("posix", "system"), f"touch {marker}")),
        ("builtins.getattr", Call(Glob("builtins", "getattr"), 0, "__class__")),
        ("torch_utils.persistence._reconstruct_persistent_obj.__globals__",
         Glob("torch_utils.persistence", "_reconstruct_persistent_obj.__globals__")),
        ("torch.load", Call(Glob("torch", "load"), "x.pt")),
    ]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("index", range(8))
def test_malicious_globals_are_refused(tmp_path, protocol, index):
    marker = tmp_path / "pwned"
    name, payload = _payloads(marker)[index]
    path = write_pickle({"G_ema": payload}, tmp_path / "evil.pkl", protocol=protocol)
    assert name in globals_in(path.read_bytes())  # the crafted file really asks for it
    with pytest.raises(UnsafePickleError, match=f"refusing global '{name}'") as info:
        read_official_pickle(path)
    assert str(path) in str(info.value)
    with pytest.raises(UnsafePickleError):
        load_official(path)
    assert not marker.exists()


def test_global_hidden_deep_inside_a_record_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = read_official_pickle(MOCK_G32)
    inner = EasyDictRecord(num_layers=2, evil=EasyDictRecord(x=_Evil(os.system, f"touch {marker}")))
    _child(data["G_ema"], "synthesis.b32.torgb").state["_init_kwargs"] = inner
    path = write_pickle(data, tmp_path / "deep.pkl")
    with pytest.raises(UnsafePickleError, match=f"'{os.system.__module__}.system'"):
        read_official_pickle(path)
    assert not marker.exists()


def test_global_inside_a_tensor_blob_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    blob = _storage_blob(torch.ones(3))
    evil = blob.replace(b"ctorch\nFloatStorage\n", b"cposix\nsystem\n")
    assert evil != blob
    path = write_pickle({"G_ema": Call(Glob("torch.storage", "_load_from_bytes"), evil)}, tmp_path / "blob.pkl")
    with pytest.raises(UnsafePickleError, match="posix.system") as info:
        read_official_pickle(path)
    assert str(path) in str(info.value) and not marker.exists()


def test_protocol0_text_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "p0.pkl"
    path.write_bytes(f"cposix\nsystem\n(Vtouch {marker}\ntR.".encode())
    with pytest.raises(OfficialPickleError, match="not a readable"):
        read_official_pickle(path)
    assert not marker.exists()


def test_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "pid.pkl"
    path.write_bytes(b"\x80\x02X\x03\x00\x00\x00abcQ.")  # BINPERSID of 'abc'
    with pytest.raises(UnsafePickleError, match="persistent id"):
        read_official_pickle(path)


def test_build_on_a_record_is_refused(tmp_path):
    rec = Call(RECONSTRUCT, {"type": "class", "version": 6, "module_src": "", "class_name": "Generator", "state": {}})
    buf = io.BytesIO()
    _Writer(buf, 2, "").dump(rec)  # protocol 2: no frames, so opcodes can be appended
    body = buf.getvalue()
    # append BUILD with a state dict just before STOP: it would overwrite the record's fields
    evil = body[:-1] + b"}X\n\x00\x00\x00class_nameX\x03\x00\x00\x00Foos" + b"b."
    path = tmp_path / "build.pkl"
    path.write_bytes(evil)
    with pytest.raises(UnsafePickleError, match="BUILD"):
        read_official_pickle(path)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"version": 5}, "version 5"),
        ({"version": 7}, "version 7"),
        ({"type": "function"}, "type 'function'"),
        ({"extra": 1}, "meta"),
    ],
)
def test_unsupported_persistent_objects_are_refused(tmp_path, meta, message):
    full = {"type": "class", "version": 6, "module_src": "", "class_name": "Generator", "state": {}}
    full.update(meta)
    path = write_pickle({"G_ema": Call(RECONSTRUCT, full)}, tmp_path / "meta.pkl")
    with pytest.raises(OfficialPickleError, match=message) as info:
        read_official_pickle(path)
    assert str(path) in str(info.value)
    # and directly on the unpickler
    with pytest.raises(OfficialPickleError, match=message):
        RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()


# ------------------------------------------------------------------------------------------------
# Tensors, storages and numpy scalars
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool])
def test_storage_blob_parser_matches_torch(dtype):
    t = (torch.arange(10) % 3).to(dtype)
    flat = parse_storage_blob(_storage_blob(t)).flat
    assert flat.dtype == dtype and torch.equal(flat, t)


def test_views_honour_offset_size_stride_and_share_storage(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    view = base.as_strided((2, 3), (1, 2), 2)
    scalar = base[5]
    path = write_pickle({"a": view, "b": scalar, "c": base}, tmp_path / "views.pkl")
    assert path.read_bytes().count(b"FloatStorage") == 1  # one blob, shared through the memo
    got = read_official_pickle(path)
    assert torch.equal(got["a"], view) and got["a"].stride() == (1, 2) and got["a"].storage_offset() == 2
    assert got["b"].shape == () and got["b"].item() == 5.0
    assert got["a"].untyped_storage().data_ptr() == got["c"].untyped_storage().data_ptr()


def test_view_outside_its_storage_is_refused(tmp_path):
    storage = Call(Glob("torch.storage", "_load_from_bytes"), _storage_blob(torch.zeros(4)))
    bad = Call(Glob("torch._utils", "_rebuild_tensor_v2"), storage, 2, (3,), (1,), False, OrderedDict())
    path = write_pickle({"G_ema": bad}, tmp_path / "oob.pkl")
    with pytest.raises(OfficialPickleError, match="exceeds its storage"):
        read_official_pickle(path)


def test_parameters_become_plain_tensors(tmp_path):
    t = torch.ones(2)
    for name, extra in [("_rebuild_parameter", ()), ("_rebuild_parameter_with_state", ({},))]:
        param = Call(Glob("torch._utils", name), t, True, OrderedDict(), *extra)
        got = read_official_pickle(write_pickle({"p": param}, tmp_path / f"{name}.pkl"))["p"]
        assert type(got) is torch.Tensor and not got.requires_grad and torch.equal(got, t)


def test_numpy_scalar_decoder():
    cases = [("f8", "<", struct.pack("<d", 2**0.5), 2**0.5), ("f8", ">", struct.pack(">d", 0.25), 0.25),
             ("f4", "<", struct.pack("<f", 1.5), 1.5), ("i8", "<", struct.pack("<q", -7), -7),
             ("b1", "|", b"\x01", True)]
    from viscoin.stylegan.official import _NumpyDType

    for code, order, raw_bytes, want in cases:
        d = _NumpyDType(code, False, True)
        d.__setstate__((3, order, None, None, None, -1, -1, 0))
        got = numpy_scalar(d, raw_bytes)
        assert got == want and type(got) is type(want)
    with pytest.raises(UnsafePickleError, match="unsupported dtype"):
        numpy_scalar(_NumpyDType("O", False, True), b"")
    with pytest.raises(UnsafePickleError, match="raw bytes"):
        numpy_scalar(_NumpyDType("f8", False, True), b"\x00")
    with pytest.raises(UnsafePickleError, match="structured"):
        _NumpyDType("V8").__setstate__((3, "|", None, ("a",), {}, 8, 1, 0))


# ------------------------------------------------------------------------------------------------
# Unreadable files
# ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pkl"
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        read_official_pickle(path)
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_official(path)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file(tmp_path, cut):
    data = MOCK_G32.read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(OfficialPickleError, match="is not a readable StyleGAN2-ADA network pickle") as info:
        load_official(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, world\n" * 10, bytes(range(256)) * 4, b"PK\x03\x04" + b"\x00" * 60, b"\x80\x04\x95garbage"],
)
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(content)
    with pytest.raises(OfficialPickleError, match="is not a readable StyleGAN2-ADA network pickle") as info:
        read_official_pickle(path)
    assert str(path) in str(info.value)


def test_pickle_without_g_ema(tmp_path):
    path = tmp_path / "no-gema.pkl"
    path.write_bytes(pickle.dumps({"G": None, "training_set_kwargs": {"resolution": 32}}, protocol=4))
    with pytest.raises(OfficialPickleError, match="no 'G_ema'") as info:
        load_official(path)
    assert str(path) in str(info.value)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(OfficialPickleError, match="not a dict"):
        load_official(path)
