"""Issue #15, files: integrity checks that cannot be switched off, umask permissions, official pickles
that cannot exhaust the machine, dimensions checked before allocating, finite numbers, honest data
counts, and malicious weight files called what they are."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from viscoin.classifier.model import Classifier, ClassifierConfig, load_classifier, save_classifier
from viscoin.data import DataConfig, build_dataset
from viscoin.data.base import BadImageWarning, DataWarning, DatasetError, ImageDataset
from viscoin.data.synthetic import ensure_synthetic
from viscoin.stylegan.checkpoint import load_network, save_network
from viscoin.stylegan.config import GeneratorConfig, MappingConfig, SynthesisConfig
from viscoin.stylegan.generator import Generator
from viscoin.stylegan.official import OfficialPickleError, load_official, read_official_pickle
from viscoin.training.config import load_config, save_config_yaml
from viscoin.training.state import latest_checkpoint, load_train_state, save_train_state
from viscoin.utils.checkpoint import check_module_size
from viscoin.utils.config import ConfigError, DictConfig, config_from_dict
from viscoin.utils.io import CheckpointError, save_tensors, write_json
from viscoin.utils.weights import read_state_dict_file


def small_generator() -> Generator:
    return Generator(GeneratorConfig(z_dim=8, w_dim=8, img_resolution=8, mapping=MappingConfig(num_layers=1),
                                     synthesis=SynthesisConfig(channel_base=32, channel_max=4)))


def edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------------------------
# 4. Our own formats: the integrity checks cannot be switched off, the pointer cannot wander


def test_a_module_checkpoint_without_its_hash_is_refused(tmp_path):
    save_network(small_generator(), tmp_path / "g")
    edit_json(tmp_path / "g" / "config.json", lambda d: d.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match=r'g/config.json: no "weights_sha256" recorded.*refused'):
        load_network(tmp_path / "g")


def test_a_module_checkpoint_cannot_point_to_weights_outside_its_folder(tmp_path):
    save_network(small_generator(), tmp_path / "g")
    shutil.copy(tmp_path / "g" / "weights.safetensors", tmp_path / "elsewhere.safetensors")
    edit_json(tmp_path / "g" / "config.json", lambda d: d.__setitem__("weights", "../elsewhere.safetensors"))
    with pytest.raises(CheckpointError, match=r'"weights" must name a file inside the checkpoint folder'):
        load_network(tmp_path / "g")


def _train_state(root: Path, step: int = 4) -> Path:
    save_train_state(root, step, {"w": torch.arange(3.0), "step": step}, "a: 1\n")
    return root / f"step-{step:09d}"


def test_a_training_checkpoint_without_its_hash_is_refused(tmp_path):
    path = _train_state(tmp_path / "checkpoints")
    edit_json(path / "state.json", lambda d: d.pop("tensors_sha256"))
    with pytest.raises(CheckpointError, match=r'state.json: no "tensors_sha256" recorded.*refused'):
        load_train_state(path)


def test_latest_json_cannot_point_outside_checkpoints(tmp_path):
    _train_state(tmp_path / "other" / "checkpoints", step=4)     # a complete checkpoint of another run
    root = tmp_path / "run" / "checkpoints"
    _train_state(root, step=2)
    write_json(root / "latest.json", {"checkpoint": "../../other/checkpoints/step-000000004", "step": 4})
    with pytest.raises(CheckpointError, match=r'latest.json: "checkpoint" must name a step-NNNNNNNNN folder inside'):
        latest_checkpoint(root)


def test_latest_json_and_state_json_must_agree_on_the_step(tmp_path):
    root = tmp_path / "checkpoints"
    _train_state(root, step=4)
    write_json(root / "latest.json", {"checkpoint": "step-000000004", "step": 9})
    with pytest.raises(CheckpointError, match=r'"step" 9 disagrees with the checkpoint step-000000004'):
        latest_checkpoint(root)
    # A checkpoint folder renamed to another step: its state.json says otherwise.
    (root / "step-000000004").rename(root / "step-000000009")
    write_json(root / "latest.json", {"checkpoint": "step-000000009", "step": 9})
    with pytest.raises(CheckpointError, match=r'"step" 4 disagrees with its folder name step-000000009'):
        load_train_state(latest_checkpoint(root))


# ----------------------------------------------------------------------------------------------
# 5. Atomic writes keep the umask's permissions


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_files_and_checkpoint_folders_get_the_umask_permissions(tmp_path, umask_022):
    write_json(tmp_path / "a.json", {"x": 1})
    save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    save_config_yaml(DataConfig(), tmp_path / "config.yaml")
    save_network(small_generator(), tmp_path / "g")
    ckpt = _train_state(tmp_path / "checkpoints")
    for f in ("a.json", "t.safetensors", "config.yaml", "g/config.json", "g/weights.safetensors",
              "checkpoints/latest.json"):
        assert mode(tmp_path / f) == 0o644, f
    assert mode(ckpt) == 0o755
    assert {f.name: mode(f) for f in ckpt.iterdir()} == {n: 0o644 for n in ("state.safetensors", "config.yaml",
                                                                              "state.json")}
    birds = ensure_synthetic(tmp_path / "cache", 0, (1, 1), progress=False)  # a folder renamed into place
    assert mode(birds) == 0o755 and mode(birds / "attributes.json") == 0o644
    os.umask(0o077)
    write_json(tmp_path / "private.json", {})
    assert mode(tmp_path / "private.json") == 0o600  # the umask is honoured, not replaced


# ----------------------------------------------------------------------------------------------
# 6. Official pickles cannot exhaust the machine


class Record:
    """Stands for a persistent network object; written as NVIDIA's REDUCE of _reconstruct_persistent_obj."""

    def __init__(self, class_name: str, state: dict[str, Any]) -> None:
        self.class_name, self.state = class_name, state


class Raw:
    """Raw pickle opcodes inserted as one object."""

    def __init__(self, ops: bytes) -> None:
        self.ops = ops


class Writer(pickle._Pickler):  # type: ignore[name-defined]  # pure-Python pickler: save() can be hooked
    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, Record):
            self.write(pickle.GLOBAL + b"torch_utils.persistence\n_reconstruct_persistent_obj\n")
            self.save({"type": "class", "version": 6, "module_src": "", "class_name": obj.class_name,
                       "state": obj.state})
            self.write(pickle.TUPLE1 + pickle.REDUCE)
        elif isinstance(obj, Raw):
            self.write(obj.ops)
        else:
            super().save(obj, save_persistent_id)


def official_pickle(path: Path, init_kwargs: dict[str, Any]) -> Path:
    """A snapshot whose G_ema stores `init_kwargs` (what `load_official` reads first)."""
    buf = io.BytesIO()
    Writer(buf, protocol=2).dump({"G_ema": Record("Generator", {"_init_args": (), "_init_kwargs": init_kwargs})})
    path.write_bytes(buf.getvalue())
    return path


def test_a_shared_list_nested_40_levels_is_refused_quickly(tmp_path):
    bomb: list[Any] = [0]
    for _ in range(40):
        bomb = [bomb, bomb]  # 2^40 items once copied out, a few hundred bytes in the file
    path = official_pickle(tmp_path / "bomb.pkl", {"z_dim": 8, "w_dim": 8, "mapping_kwargs": {"x": bomb}})
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    with pytest.raises(OfficialPickleError, match=r"bomb.pkl: more than 1,000,000 items.*refused"):
        load_official(path)
    assert time.perf_counter() - start < 2


def test_deep_nesting_is_refused_without_recursion_error(tmp_path):
    deep = Raw(b"]" * 20_001 + b"a" * 20_000)  # a list inside a list ... 20,000 levels deep
    path = official_pickle(tmp_path / "deep.pkl", {"z_dim": 8, "w_dim": 8, "synthesis_kwargs": {"x": deep}})
    with pytest.raises(OfficialPickleError, match=r"deep.pkl: objects nested more than 100 levels deep; refused"):
        load_official(path)


def test_lists_nested_after_being_filled_are_refused_too(tmp_path):
    # 2,000 lists memoised first, then each appended into the previous one: only the final object is deep.
    ops = b"".join(b"]" + pickle.LONG_BINPUT + i.to_bytes(4, "little") + b"0" for i in range(2000))
    ops += b"".join(pickle.LONG_BINGET + i.to_bytes(4, "little") + pickle.LONG_BINGET + (i + 1).to_bytes(4, "little")
                    + b"a0" for i in range(1999))
    ops += pickle.LONG_BINGET + (0).to_bytes(4, "little")
    path = official_pickle(tmp_path / "late.pkl", {"z_dim": 8, "w_dim": 8, "mapping_kwargs": {"x": Raw(ops)}})
    with pytest.raises(OfficialPickleError, match=r"late.pkl: objects nested more than 100 levels deep"):
        load_official(path)


def test_a_container_holding_itself_is_refused(tmp_path):
    loop: dict[str, Any] = {"num_layers": 2}
    loop["again"] = loop
    path = official_pickle(tmp_path / "loop.pkl", {"z_dim": 8, "w_dim": 8, "mapping_kwargs": loop})
    with pytest.raises(OfficialPickleError, match=r"loop.pkl: a container holds itself; refused"):
        load_official(path)


def test_a_deep_tuple_key_is_refused_before_python_hashes_it(tmp_path):
    # {((((1,),),) ... 10^6 levels): 2}: hashing the key recurses in C, and CPython crashes.
    path = tmp_path / "hash.pkl"
    path.write_bytes(b"\x80\x02}K\x01" + pickle.TUPLE1 * 1_000_000 + b"K\x02s.")
    with pytest.raises(OfficialPickleError, match=r"hash.pkl: objects nested more than 100 levels deep"):
        read_official_pickle(path)


# ----------------------------------------------------------------------------------------------
# 7. Dimensions from a file are checked before anything is allocated


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["synthesis"].update(channel_base=2**26, channel_max=2**26),
         r"synthesis.channel_base: expected > 0 and <= 1,048,576, got 67,108,864"),
        (lambda c: c.update(img_resolution=2**20), r"img_resolution: expected a power of two <= 4096, got 1,048,576"),
        (lambda c: c.update(z_dim=-5), r"z_dim: expected >= 0 and <= 8,192, got -5"),
        (lambda c: c.update(c_dim=10**9), r"c_dim: expected >= 0 and <= 100,000"),
        (lambda c: c["mapping"].update(num_layers=10**6), r"mapping.num_layers: expected > 0 and <= 64"),
        (lambda c: c["synthesis"].update(resample_filter=[1.0] * 10**5), r"synthesis.resample_filter: expected 1 to 16"),
    ],
)
def test_absurd_generator_dimensions_in_a_checkpoint_are_refused(tmp_path, edit, message):
    save_network(small_generator(), tmp_path / "g")
    edit_json(tmp_path / "g" / "config.json", lambda d: edit(d["config"]))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as info:
        load_network(tmp_path / "g")
    assert str(tmp_path / "g" / "config.json") in str(info.value)
    assert time.perf_counter() - start < 2


def test_a_network_too_large_in_total_is_refused_before_allocation(tmp_path):
    save_network(small_generator(), tmp_path / "g")
    # Each value within its bound; together 4096 channels at every resolution up to 4096 px.
    edit_json(tmp_path / "g" / "config.json",
              lambda d: d["config"].update(img_resolution=4096, synthesis={**d["config"]["synthesis"],
                                                                         "channel_base": 2**20, "channel_max": 4096}))
    with pytest.raises(CheckpointError, match=r"g/config.json: config: the network it describes has [\d,]+ parameter "
                                              r"elements \([\d.]+ GiB in float32\), more than the 1,073,741,824"):
        load_network(tmp_path / "g")
    check_module_size(small_generator, "small")  # a sane one passes


def test_absurd_dimensions_in_an_official_pickle_are_refused(tmp_path):
    path = official_pickle(tmp_path / "huge.pkl", {"z_dim": 512, "w_dim": 512, "img_resolution": 256,
                                                   "synthesis_kwargs": {"channel_base": 2**26, "channel_max": 2**26}})
    with pytest.raises(OfficialPickleError, match=r"huge.pkl: G_ema.*synthesis.channel_base: expected > 0 and <="):
        load_official(path)


def _classifier_folder(tmp_path: Path) -> Path:
    model = Classifier(ClassifierConfig(arch="resnet18", num_classes=3, pretrained="none", width=4),
                       load_pretrained=False)
    return save_classifier(model, tmp_path / "f")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_classes", 10**9, r"classifier.num_classes: expected an integer from 2 to 100,000"),
        ("width", 10**6, r"classifier.width: expected an integer from 1 to 1024"),
    ],
)
def test_absurd_classifier_dimensions_in_a_checkpoint_are_refused(tmp_path, key, value, message):
    folder = _classifier_folder(tmp_path)
    edit_json(folder / "config.json", lambda d: d["config"].__setitem__(key, value))
    with pytest.raises(CheckpointError, match=message) as info:
        load_classifier(folder)
    assert str(folder / "config.json") in str(info.value)


# ----------------------------------------------------------------------------------------------
# 8. Finite numbers


@dataclass(frozen=True)
class Numbers(DictConfig):
    lr: float = 0.1
    gamma: float | Literal["auto"] = 1.0
    clamp: float | None = None


@pytest.mark.parametrize("text", ["nan", ".nan", "inf", "-.inf", "1e400"])
def test_nan_and_infinite_config_values_are_refused(tmp_path, text):
    with pytest.raises(ConfigError, match=r"config.lr: expected a finite number"):
        load_config(Numbers, None, [f"lr={text}"])
    src = tmp_path / "c.yaml"
    src.write_text(f"clamp: {text}\n")
    with pytest.raises(ConfigError, match=r"c.yaml.clamp: expected a finite number"):
        load_config(Numbers, src)
    with pytest.raises(ConfigError, match=r"gamma: .* matches none of .*expected a finite number"):
        config_from_dict(Numbers, {"gamma": yaml.safe_load(text)})
    assert load_config(Numbers, None, ["lr=1e-3", "gamma=auto"]) == Numbers(lr=1e-3, gamma="auto")


def test_nan_from_json_is_refused():
    with pytest.raises(ConfigError, match=r"generator.json.w_avg_beta|expected a finite number"):
        config_from_dict(MappingConfig, json.loads('{"w_avg_beta": NaN}'), "generator.json")


def test_nan_weights_in_our_checkpoints_are_errors_naming_file_and_tensor(tmp_path):
    G = small_generator()
    with torch.no_grad():
        G.mapping.fc0.weight[0, 0] = float("nan")
    save_network(G, tmp_path / "g")
    with pytest.raises(CheckpointError, match=r"g/weights.safetensors: tensor 'mapping.fc0.weight' holds 1 NaN"):
        load_network(tmp_path / "g")
    root = tmp_path / "checkpoints"
    save_train_state(root, 3, {"model": {"w": torch.tensor([1.0, float("inf")])}}, "")
    with pytest.raises(CheckpointError, match=r"state.safetensors: tensor 'state/model/w' holds 1 NaN or infinite"):
        load_train_state(latest_checkpoint(root))


# ----------------------------------------------------------------------------------------------
# 9. Data: one class, a test class nobody trained on, unreadable images counted out


def _images(folder: Path, n: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"img{start + i:02d}.png")


def test_one_class_data_cannot_train_a_classifier(tmp_path, capsys):
    from viscoin.cli import main

    _images(tmp_path / "flat", 6)
    assert build_dataset(DataConfig(root=str(tmp_path / "flat"), resolution=8), "train").num_classes == 1  # a GAN may
    with pytest.raises(ConfigError, match="1 class: there is nothing to classify.*only generator training accepts"):
        ClassifierConfig(num_classes=1)
    rc = main(["classifier", "train", "--config", "tiny", f"data.root={tmp_path / 'flat'}",
               f"run.out_dir={tmp_path / 'run'}", "run.progress=false"])
    assert rc == 2
    assert "nothing to classify" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_test_class_without_training_images_is_warned_about(tmp_path):
    for split, cls, n in (("train", "a", 3), ("train", "b", 3), ("test", "a", 2), ("test", "c", 2)):
        _images(tmp_path / "d" / split / cls, n)
    cfg = DataConfig(root=str(tmp_path / "d"), resolution=8)
    with pytest.warns(DataWarning, match=r"d/test: 1 class\(es\) have test images but no training image .*: c;"):
        test = build_dataset(cfg, "test")
    assert test.classes == ["a", "b", "c"] and test.label_counts() == [2, 0, 2]


def test_skip_mode_counts_only_readable_images(tmp_path):
    _images(tmp_path / "a", 4)
    (tmp_path / "a" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    files = sorted((tmp_path / "a").iterdir())
    attrs = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    with pytest.warns(BadImageWarning, match=r"test split: left out 1 unreadable image\(s\) of 4 .*3 remain"):
        ds = ImageDataset([(f, 0) for f in files], ["a"], split="test", resolution=8, augment=False,
                          attribute_names=["k"], attributes=attrs, on_bad_image="skip")
    assert len(ds) == 3 and ds.label_counts() == [3] and ds.skipped == [files[1]]
    assert [ds[i]["attributes"].item() for i in range(3)] == [0.0, 2.0, 3.0]  # rows follow their images
    with pytest.raises(DatasetError, match="cannot read image"):  # the error mode still refuses it
        ImageDataset([(f, 0) for f in files], ["a"], split="test", resolution=8, augment=False)[1]


# ----------------------------------------------------------------------------------------------
# 10. A malicious .pth is called what it is


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.system, ("echo pwned",))


def test_a_malicious_pth_is_refused_as_code_and_never_advised_to_be_loaded(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _Payload()}, evil)
    with pytest.raises(CheckpointError) as info:
        read_state_dict_file(evil)
    message = str(info.value)
    assert message.startswith(f"{evil}: refused: loading it would import and call") and "execute code" in message
    for advice in ("weights_only=False", "weights_only", "safe_globals", "trusted source"):
        assert advice not in message
    assert "pwned" not in capsys.readouterr().out
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))  # a plain pickle, not a torch file
    with pytest.raises(CheckpointError) as info:
        read_state_dict_file(garbage)
    assert "not a readable PyTorch state dict" in str(info.value) and "weights_only" not in str(info.value)
