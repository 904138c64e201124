"""Datasets (viscoin.data): tiny fake copies of each layout written to tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viscoin.data import DataConfig, DatasetError, ImageDataset, build_dataset
from viscoin.data.base import BadImageWarning, random_resized_crop
from viscoin.utils.config import ConfigError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_image(path: Path, colour=RED, size=(20, 30), mode="RGB", **save_args) -> Path:
    """A solid-colour image of `size` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **save_args)
    return path


def gradient(width: int = 20, height: int = 30) -> np.ndarray:
    """uint8 [H, W, 3]: red grows to the right, green grows downwards, blue constant."""
    x = np.linspace(0, 255, width).round().astype(np.uint8)
    y = np.linspace(0, 255, height).round().astype(np.uint8)
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :, 0] = x[None, :]
    img[:, :, 1] = y[:, None]
    img[:, :, 2] = 77
    return img


def write_array(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def expected(colour) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32) / 127.5 - 1


def assert_colour(img: torch.Tensor, colour) -> None:
    assert torch.equal(img, expected(colour)[:, None, None].expand_as(img))


# ----------------------------------------------------------------------------------------------
# Image folder


def make_folder(root: Path, counts: dict[str, int], colours=None) -> None:
    colours = colours or {}
    for name, n in counts.items():
        for i in range(n):
            write_image(root / name / f"img{i:02d}.png", colours.get(name, RED))


def test_folder_with_split_levels(tmp_path):
    root = tmp_path / "ds"
    make_folder(root / "train", {"zebra": 3, "ant": 2}, {"zebra": BLUE, "ant": RED})
    make_folder(root / "test", {"zebra": 1, "bee": 1}, {"zebra": BLUE, "bee": GREEN})
    # hidden files/folders and non-image files are ignored; extensions are case-insensitive
    write_image(root / "train" / "ant" / ".hidden.png")
    write_image(root / "train" / "ant" / ".cache" / "x.png")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    write_image(root / "train" / "ant" / "sub" / "UPPER.PNG")
    write_image(root / "train" / "ant" / "photo.JPeG")
    write_image(root / "train" / ".trash" / "y.png")

    train = build_dataset(DataConfig(root=str(root), resolution=8), "train")
    test = build_dataset(DataConfig(root=str(root), resolution=8), "test")
    assert train.classes == test.classes == ["ant", "bee", "zebra"]  # union of both splits, sorted
    assert train.num_classes == 3
    assert len(train) == 7 and len(test) == 2
    assert train.label_counts() == [4, 0, 3]
    assert test.label_counts() == [0, 1, 1]
    names = sorted(p.name for p, _ in train.samples)
    assert names == ["UPPER.PNG", "img00.png", "img00.png", "img01.png", "img01.png", "img02.png", "photo.JPeG"]
    assert train.augment and not test.augment and train.split == "train"
    assert train.attributes is None and train.attribute_names is None

    item = test[1]
    assert set(item) == {"image", "label", "index"}
    assert item["label"] == 2 and item["index"] == 1
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert_colour(item["image"], BLUE)
    bee = test[0]
    assert bee["label"] == 1
    assert_colour(bee["image"], GREEN)
    # augmented solid images stay solid and exact
    for key in [(0, 0), (3, 123), 5]:
        img = train[key]["image"]
        assert img.min() >= -1 and img.max() <= 1
    assert_colour(train[(6, 9)]["image"], BLUE)


def test_folder_image_modes(tmp_path):
    root = tmp_path / "modes"
    write_image(root / "a" / "gray.png", 255, mode="L")  # white
    write_image(root / "a" / "rgba.png", (255, 0, 0, 10), mode="RGBA")  # alpha dropped
    pal = Image.new("P", (20, 30), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 1 = green
    pal.save(root / "a" / "palette.gif")
    pal.save(root / "a" / "palette_t.png", transparency=bytes([0, 128]))  # per-entry alpha: PIL warns on RGB
    write_image(root / "a" / "cmyk.tif", (0, 255, 255, 0), mode="CMYK")  # red
    Image.fromarray(np.full((30, 20), 128 * 257, np.uint16)).save(root / "a" / "gray16.png")  # mid gray
    write_image(root / "a" / "bitmap.bmp", BLUE)
    write_image(root / "a" / "lossless.webp", BLUE, lossless=True)
    cfg = DataConfig(root=str(root), resolution=8, test_fraction=0.5)
    ds = build_dataset(cfg, "train", augment=False)
    ds_all = ImageDataset(
        ds.samples + build_dataset(cfg, "test").samples, ds.classes, split="all", resolution=8, augment=False
    )
    assert len(ds_all) == 8
    colours = {
        "gray.png": (255, 255, 255), "rgba.png": RED, "palette.gif": GREEN, "palette_t.png": GREEN,
        "cmyk.tif": RED, "gray16.png": (128, 128, 128), "bitmap.bmp": BLUE, "lossless.webp": BLUE,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's warning about palettes with transparency
        for i, (path, _) in enumerate(ds_all.samples):
            assert_colour(ds_all[i]["image"], colours[path.name])


def test_test_transform_center_crops(tmp_path):
    # 30 x 20 image: green borders of 5 px, then a red left half and a blue right half
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :5] = GREEN
    img[:, 5:15] = RED
    img[:, 15:25] = BLUE
    img[:, 25:] = GREEN
    write_array(tmp_path / "c" / "test" / "x" / "wide.png", img)
    write_array(tmp_path / "c" / "test" / "x" / "tall.png", img.transpose(1, 0, 2).copy())
    ds = build_dataset(DataConfig(root=str(tmp_path / "c"), resolution=20), "test")
    assert not ds.augment
    out = {p.name: ds[i]["image"] for i, (p, _) in enumerate(ds.samples)}
    wide = torch.from_numpy(img[:, 5:25]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(out["wide.png"], wide)  # same size: an exact crop of the middle
    assert torch.equal(out["tall.png"], wide.transpose(1, 2))
    # at a lower resolution the middle of each half keeps its colour and no green is left
    ds8 = ImageDataset(ds.samples, ds.classes, split="test", resolution=8, augment=False)
    small = ds8[[p.name for p, _ in ds.samples].index("wide.png")]["image"]
    assert_colour(small[:, :, 1:3], RED)
    assert_colour(small[:, :, 5:7], BLUE)


def test_folder_seeded_split(tmp_path):
    root = tmp_path / "flat"
    make_folder(root, {"cat": 10, "dog": 5, "emu": 1, "fox": 2})
    cfg = DataConfig(root=str(root), resolution=8, test_fraction=0.2, split_seed=3)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.classes == test.classes == ["cat", "dog", "emu", "fox"]
    assert test.label_counts() == [2, 1, 0, 1]  # stratified: round(0.2 n), >= 1 each side when n >= 2
    assert train.label_counts() == [8, 4, 1, 1]
    train_files, test_files = {p for p, _ in train.samples}, {p for p, _ in test.samples}
    assert not train_files & test_files and len(train_files | test_files) == 18
    again = build_dataset(cfg, "test")
    assert again.samples == test.samples  # deterministic
    seeds = {tuple(build_dataset(DataConfig(root=str(root), split_seed=s), "test").samples) for s in range(6)}
    assert len(seeds) > 1  # changes with split_seed
    half = build_dataset(DataConfig(root=str(root), test_fraction=0.5), "test")
    assert half.label_counts() == [5, 3, 0, 1]


def test_empty_and_missing_roots(tmp_path):
    with pytest.raises(DatasetError, match=r"data.root: folder .*nope does not exist"):
        build_dataset(DataConfig(root=str(tmp_path / "nope")), "train")
    with pytest.raises(DatasetError, match="data.root: not set"):
        build_dataset(DataConfig(), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no class folders in .*empty.*expected root/<class>/<image>"):
        build_dataset(DataConfig(root=str(tmp_path / "empty")), "train")
    # Images without class folders: one class named after the folder (a plain collection, e.g. for a GAN).
    for i in range(5):
        write_image(tmp_path / "loose" / f"{i}.png")
    loose = build_dataset(DataConfig(root=str(tmp_path / "loose")), "train")
    assert loose.classes == ["loose"] and len(loose) == 4 and {label for _, label in loose.samples} == {0}
    assert len(build_dataset(DataConfig(root=str(tmp_path / "loose")), "test")) == 1
    make_folder(tmp_path / "onlytrain" / "train", {"a": 2})
    with pytest.raises(DatasetError, match=r"no test/ folder in .*onlytrain"):
        build_dataset(DataConfig(root=str(tmp_path / "onlytrain")), "test")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="no train images"):
        build_dataset(DataConfig(root=str(tmp_path / "noimg")), "train")
    with pytest.raises(DatasetError, match="no Stanford Cars layout"):
        build_dataset(DataConfig(kind="cars", root=str(tmp_path / "empty")), "train")


# ----------------------------------------------------------------------------------------------
# Augmentation


@pytest.fixture
def gradient_dataset(tmp_path) -> ImageDataset:
    root = tmp_path / "g"
    write_array(root / "train" / "a" / "0.png", gradient(40, 30))
    write_array(root / "train" / "a" / "1.png", gradient(20, 20))
    write_array(root / "train" / "b" / "2.png", gradient(30, 40))
    write_image(root / "test" / "b" / "3.png", BLUE)
    return build_dataset(DataConfig(root=str(root), resolution=16), "train")


def test_augmentation_is_seeded(gradient_dataset):
    ds = gradient_dataset
    assert ds.augment
    assert [p.name for p, _ in ds.samples] == ["0.png", "1.png", "2.png"]
    i = 0
    state = torch.get_rng_state()
    a = ds[i, 7]["image"]
    torch.manual_seed(1234)  # the global RNG plays no part
    b = ds[i, 7]["image"]
    assert torch.equal(a, b)
    torch.set_rng_state(state)
    ds[i, 8]
    assert torch.equal(torch.get_rng_state(), state)  # and is not consumed
    crops = [ds[i, s]["image"] for s in range(8)]
    assert sum(not torch.equal(crops[0], c) for c in crops[1:]) >= 6  # different seeds, different crops
    assert torch.equal(ds[2]["image"], ds[2, 2]["image"])  # plain index: seed = index
    assert not torch.equal(ds[2]["image"], ds[2, 0]["image"])
    assert a.shape == (3, 16, 16) and a.min() >= -1 and a.max() <= 1
    test = ImageDataset(ds.samples, ds.classes, split="train", resolution=16, augment=False)
    assert torch.equal(test[i, 1]["image"], test[i, 2]["image"])  # no augmentation: seed ignored


def test_random_resized_crop_matches_torchvision():
    from torchvision.transforms import RandomResizedCrop

    for seed in range(50):
        for w, h in [(40, 30), (20, 200), (500, 375)]:
            torch.manual_seed(seed)
            top, left, ch, cw = RandomResizedCrop.get_params(torch.empty(3, h, w), (0.08, 1.0), (3 / 4, 4 / 3))
            box = random_resized_crop(w, h, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
            assert box == (left, top, left + cw, top + ch)


def test_transforms_match_torchvision():
    from torchvision import transforms as T

    from viscoin.data.base import to_tensor

    rng = np.random.default_rng(0)
    for w, h, r in [(40, 30, 16), (23, 57, 8), (64, 32, 16), (120, 90, 33)]:
        noise = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # any filter difference shows
        test = ImageDataset([], [], split="test", resolution=r, augment=False)
        ref = to_tensor(T.CenterCrop(r)(T.Resize(r)(noise)))
        assert (test.transform(noise) - ref).abs().max() <= 1.01 / 127.5
        train = ImageDataset([], [], split="train", resolution=r, augment=True, hflip=0.0)
        for seed in range(4):
            torch.manual_seed(seed)
            ref = to_tensor(T.RandomResizedCrop(r)(noise))
            diff = (train.transform(noise, seed) - ref).abs()[:, 2:-2, 2:-2]  # borders differ (see base.py)
            assert diff.max() <= 1.01 / 127.5


def test_flip(tmp_path):
    write_array(tmp_path / "f" / "a" / "0.png", gradient(20, 20))
    cfg = DataConfig(root=str(tmp_path / "f"), resolution=20, crop_scale=(1, 1), crop_ratio=(1, 1))
    with pytest.raises(DatasetError):  # a single image goes to train
        build_dataset(cfg, "test")
    ds = build_dataset(cfg, "train")
    plain = torch.from_numpy(gradient(20, 20)).permute(2, 0, 1).float() / 127.5 - 1
    flipped = plain.flip(-1)
    outs = [ds[0, s]["image"] for s in range(20)]
    assert all(torch.equal(o, plain) or torch.equal(o, flipped) for o in outs)
    assert any(torch.equal(o, flipped) for o in outs) and any(torch.equal(o, plain) for o in outs)
    never = ImageDataset(ds.samples, ds.classes, split="train", resolution=20, augment=True,
                         crop_scale=(1, 1), crop_ratio=(1, 1), hflip=0.0)
    assert all(torch.equal(never[0, s]["image"], plain) for s in range(10))


def test_dataloader_collates_seeded_keys(gradient_dataset):
    loader = torch.utils.data.DataLoader(gradient_dataset, batch_sampler=[[(0, 5), (2, 6)], [(2, 6), (0, 5)]],
                                         num_workers=0)
    first, second = list(loader)
    assert first["image"].shape == (2, 3, 16, 16) and first["image"].dtype == torch.float32
    assert first["label"].tolist() == [0, 1] and first["index"].tolist() == [0, 2]
    assert torch.equal(first["image"][0], second["image"][1])


# ----------------------------------------------------------------------------------------------
# Bad images


def test_corrupt_image(tmp_path):
    make_folder(tmp_path / "d" / "train", {"a": 3})
    make_folder(tmp_path / "d" / "test", {"a": 1})
    bad = tmp_path / "d" / "train" / "a" / "img01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    cfg = DataConfig(root=str(tmp_path / "d"), resolution=8)
    ds = build_dataset(cfg, "train")
    assert ds[0]["index"] == 0
    with pytest.raises(DatasetError, match=r"cannot read image .*img01\.png"):
        ds[1]

    # Skip mode leaves the unreadable image out: the dataset counts (and evaluates) readable images only.
    with pytest.warns(BadImageWarning, match=r"train split: left out 1 unreadable image\(s\) of 3 .*2 remain.*img01\.png"):
        skip = build_dataset(DataConfig.from_dict({**cfg.to_dict(), "on_bad_image": "skip"}), "train")
    assert len(skip) == 2 and skip.skipped == [bad] and skip.label_counts() == [2]
    item = skip[1, 3]
    assert item["index"] == 1 and item["label"] == 0
    assert torch.equal(item["image"], ds[2, 3]["image"])
    truncated = tmp_path / "d" / "train" / "a" / "img02.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"img02\.png.*it was readable when the train split was read"):
        skip[1]
    bad.unlink()
    with pytest.raises(DatasetError, match=r"cannot read image .*img01\.png"):
        ds[1]  # a missing file is unreadable too


# ----------------------------------------------------------------------------------------------
# CUB-200-2011

CUB_IMAGES = [  # (id, class id, is_train, colour)
    (1, 1, 1, RED), (2, 1, 0, RED), (3, 2, 1, GREEN), (4, 2, 1, GREEN), (5, 3, 0, BLUE), (6, 3, 1, BLUE),
]
CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 3: "003.Sooty_Albatross"}


def make_cub(root: Path, attributes: bool = True, names_at: str = "parent") -> Path:
    cub = root / "CUB_200_2011"
    images, labels, split = [], [], []
    for i, c, t, colour in CUB_IMAGES:
        rel = f"{CUB_CLASSES[c]}/{CUB_CLASSES[c].split('.')[1]}_{i:04d}.jpg"
        write_image(cub / "images" / rel, colour)
        images.append(f"{i} {rel}")
        labels.append(f"{i} {c}")
        split.append(f"{i} {t}")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (cub / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in CUB_CLASSES.items()))
    if attributes:
        lines = []
        for i, *_ in CUB_IMAGES:
            for a in range(1, 5):
                present = int((i + a) % 3 == 0)
                lines.append(f"{i} {a} {present} {1 + a % 4} {i * 0.5:.3f}")
        lines[9] = lines[9] + " 0 12.5"  # malformed: extra columns (as in the real file)
        (cub / "attributes").mkdir()
        (cub / "attributes" / "image_attribute_labels.txt").write_text("\n".join(lines) + "\n")
        names = [
            "has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue", "has_size::small",
        ]
        names_file = cub.parent / "attributes.txt" if names_at == "parent" else cub / "attributes" / "attributes.txt"
        names_file.write_text("".join(f"{a} {name}\n" for a, name in enumerate(names, start=1)))
    return cub


@pytest.mark.parametrize("names_at", ["parent", "attributes"])
def test_cub(tmp_path, names_at):
    cub = make_cub(tmp_path, names_at=names_at)
    for root in (tmp_path, cub):  # the CUB_200_2011 folder or its parent
        train = build_dataset(DataConfig(kind="cub", root=str(root), resolution=8), "train")
        test = build_dataset(DataConfig(kind="cub", root=str(root), resolution=8), "test")
        assert train.classes == list(CUB_CLASSES.values())
        assert [p.name for p, _ in train.samples] == [
            "Black_footed_Albatross_0001.jpg", "Laysan_Albatross_0003.jpg", "Laysan_Albatross_0004.jpg",
            "Sooty_Albatross_0006.jpg",
        ]
        assert [y for _, y in train.samples] == [0, 1, 1, 2] and [y for _, y in test.samples] == [0, 2]
        assert train.attribute_names == [
            "has_bill_shape::curved_(up_or_down)", "has_bill_shape::dagger", "has_wing_color::blue", "has_size::small",
        ]
        expect = torch.tensor([[float((i + a) % 3 == 0) for a in range(1, 5)] for i in (1, 3, 4, 6)])
        assert train.attributes.shape == (4, 4) and torch.equal(train.attributes, expect)
        assert test.attributes.shape == (2, 4) and test.attributes[1].tolist() == [1.0, 0.0, 0.0, 1.0]  # id 5
    item = test[1]
    assert item["attributes"].dtype == torch.float32 and item["attributes"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert item["label"] == 2
    assert_colour(item["image"].round(decimals=1), (0, 0, 255))  # JPEG: close to pure blue


def test_cub_without_attributes_and_missing_files(tmp_path):
    cub = make_cub(tmp_path, attributes=False)
    (cub / "classes.txt").unlink()  # class names then come from the image folders
    ds = build_dataset(DataConfig(kind="cub", root=str(cub)), "test")
    assert ds.attributes is None and ds.attribute_names is None and "attributes" not in ds[0]
    assert ds.classes == list(CUB_CLASSES.values())
    (cub / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match=rf"train_test_split\.txt.*looked in {cub}"):
        build_dataset(DataConfig(kind="cub", root=str(cub)), "train")
    with pytest.raises(DatasetError, match=r"images\.txt.*looked in"):
        build_dataset(DataConfig(kind="cub", root=str(tmp_path / "CUB_200_2011" / "images")), "train")


def test_cub_attributes_without_names(tmp_path):
    cub = make_cub(tmp_path)
    (tmp_path / "attributes.txt").unlink()
    ds = build_dataset(DataConfig(kind="cub", root=str(cub)), "train")
    assert ds.attribute_names == ["attribute_1", "attribute_2", "attribute_3", "attribute_4"]


# ----------------------------------------------------------------------------------------------
# Stanford Cars

CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]


def _annotations(entries: list[tuple[str, int]]) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    ann = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for k, (fname, cls) in enumerate(entries):
        ann[0, k] = (np.array([[1]], np.uint8), np.array([[2]], np.uint8), np.array([[15]], np.uint8),
                     np.array([[25]], np.uint8), np.array([[cls]], np.uint8), np.array([fname]))
    return ann


def make_cars_original(root: Path) -> None:
    from scipy.io import savemat

    names = np.empty((1, len(CAR_CLASSES)), dtype=object)
    names[0, :] = CAR_CLASSES
    train = [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 3), ("00004.jpg", 2)]
    test = [("00001.jpg", 2)]  # one entry: loadmat squeezes it to a 0-d array
    colours = {1: RED, 2: GREEN, 3: BLUE}
    for fname, cls in train:
        write_image(root / "cars_train" / fname, colours[cls])
    for fname, cls in test:
        write_image(root / "cars_test" / fname, colours[cls])
    (root / "devkit").mkdir()
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(train)})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _annotations(test)})


def test_cars_original(tmp_path):
    make_cars_original(tmp_path)
    cfg = DataConfig(kind="cars", root=str(tmp_path), resolution=8)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.classes == test.classes == CAR_CLASSES  # cars_meta.mat order
    assert [(p.parent.name, p.name, y) for p, y in train.samples] == [
        ("cars_train", "00001.jpg", 2), ("cars_train", "00002.jpg", 0), ("cars_train", "00003.jpg", 2),
        ("cars_train", "00004.jpg", 1),
    ]
    assert [(p.parent.name, y) for p, y in test.samples] == [("cars_test", 1)]
    assert train.label_counts() == [1, 1, 2]
    assert test[0]["label"] == 1 and test[0]["image"].shape == (3, 8, 8)

    (tmp_path / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DatasetError, match=rf"cars_test_annos_withlabels\.mat.*looked in {tmp_path}.*devkit"):
        build_dataset(cfg, "test")


def test_cars_redistribution(tmp_path):
    base = tmp_path / "car_data" / "car_data"
    acura, hummer = "Acura RL Sedan 2012", "AM General Hummer SUV 2000"
    make_folder(base / "train", {acura: 2, hummer: 1}, {acura: GREEN})
    make_folder(base / "test", {acura: 1, hummer: 1}, {acura: GREEN})
    (tmp_path / "car_data" / "names.csv").write_text("AM General Hummer SUV 2000\nAcura RL Sedan 2012\n")
    for root in (tmp_path, base):
        train = build_dataset(DataConfig(kind="cars", root=str(root), resolution=8), "train")
        test = build_dataset(DataConfig(kind="cars", root=str(root), resolution=8), "test")
        assert train.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]  # sorted folder names
        assert train.label_counts() == [1, 2] and test.label_counts() == [1, 1]
        assert_colour(test[1]["image"], GREEN)


# ----------------------------------------------------------------------------------------------
# CelebA-HQ

CELEBA_NAMES = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Male", "Young"]


def make_celebahq(root: Path, n: int = 11) -> Path:
    folder = root / "CelebAMask-HQ"
    lines = [str(n), " ".join(CELEBA_NAMES)]
    for i in range(n):
        write_image(folder / "CelebA-HQ-img" / f"{i}.jpg", (250, 250, 250), size=(16, 16))
        values = [1 if (i >> b) & 1 else -1 for b in range(len(CELEBA_NAMES))]
        lines.append(f"{i}.jpg  " + " ".join(str(v) for v in values))
    (folder / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_celebahq(tmp_path):
    folder = make_celebahq(tmp_path)
    for root in (tmp_path, folder):
        train = build_dataset(DataConfig(kind="celebahq", root=str(root), resolution=8), "train")
        test = build_dataset(DataConfig(kind="celebahq", root=str(root), resolution=8), "test")
        assert train.classes == test.classes == ["old", "young"]
        assert [p.name for p, _ in test.samples] == ["0.jpg", "5.jpg", "10.jpg"]  # i % 5 == 0
        assert len(train) == 8 and "5.jpg" not in {p.name for p, _ in train.samples}
        assert [y for _, y in test.samples] == [0, 0, 1]  # Young is bit 3: only 10 = 0b1010 has it
        assert train.attribute_names == CELEBA_NAMES
        assert test.attributes.shape == (3, 4)
        assert test.attributes.tolist() == [[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]]
    item = train[3, 1]
    assert item["attributes"].tolist() == [0.0, 0.0, 1.0, 0.0]  # image 4
    assert item["image"].shape == (3, 8, 8)

    (folder / "CelebAMask-HQ-attribute-anno.txt").unlink()
    with pytest.raises(DatasetError, match=rf"CelebAMask-HQ-attribute-anno\.txt.*looked in {tmp_path}"):
        build_dataset(DataConfig(kind="celebahq", root=str(tmp_path)), "train")


def test_celebahq_bad_annotation(tmp_path):
    folder = make_celebahq(tmp_path, n=3)
    anno = folder / "CelebAMask-HQ-attribute-anno.txt"
    anno.write_text(anno.read_text().replace("1.jpg  ", "1.jpg  1 "))
    with pytest.raises(DatasetError, match=r"line 4"):
        build_dataset(DataConfig(kind="celebahq", root=str(folder)), "train")


# ----------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    "field, value",
    [
        ("resolution", 4),
        ("test_fraction", 0.0),
        ("test_fraction", 1.0),
        ("crop_scale", (0.9, 0.5)),
        ("crop_scale", (0.0, 1.0)),
        ("crop_scale", (0.5, 1.5)),
        ("crop_ratio", (1.5, 0.5)),
        ("hflip", 1.5),
        ("kind", "imagenet"),
        ("on_bad_image", "ignore"),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=rf"data\.{field}"):
        DataConfig(**{field: value})
    with pytest.raises(ConfigError, match=rf"{field}"):
        DataConfig.from_dict({field: list(value) if isinstance(value, tuple) else value})


def test_config_round_trip():
    cfg = DataConfig(kind="cub", root="/x", resolution=64, crop_scale=[0.5, 1])
    assert cfg.crop_scale == (0.5, 1.0)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        DataConfig.from_dict({"resolutoin": 64})
