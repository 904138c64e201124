"""StyleGAN2-ADA training (training spec §2-3) on tiny CPU sizes: the recipe's formulas, the loss
terms, learning on simple shapes, ADA's p on a tiny vs a large dataset, exact resume after kill -9,
and fine-tuning from the mock official pickle and from our own runs."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import MOCK_COND16, MOCK_G32
from viscoin.cli import build_parser
from viscoin.cli.generator import cmd_generator_train
from viscoin.data import DataConfig, build_dataset
from viscoin.stylegan.checkpoint import import_official, load_network
from viscoin.stylegan.config import GeneratorConfig, MappingConfig, SynthesisConfig
from viscoin.stylegan.generator import Generator
from viscoin.stylegan.official import load_official
from viscoin.stylegan.train import (
    ClassGroupedImages,
    GanImages,
    GeneratorTrainConfig,
    MixingGenerator,
    GanOptimConfig,
    auto_settings,
    blend_labels,
    ema_beta,
    lazy_adam,
    mode_seeking_penalty,
    path_length_penalty,
    r1_penalty,
    resolve_config,
    train_generator,
    transition_weight,
    ungroup,
    update_ema,
)
from viscoin.training.config import load_config
from viscoin.utils.config import ConfigError
from viscoin.utils.images import to_uint8

# ----------------------------------------------------------------------------------------------
# Datasets and helpers


def make_shapes(root: Path, n: int = 64, size: int = 16, classes: int = 1, seed: int = 0) -> Path:
    """Red squares and blue discs of random size and place on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = np.full((size, size, 3), 20, np.uint8)
        cy, cx = rng.integers(4, size - 4, 2)
        r = rng.integers(2, 5)
        kind = rng.integers(2) if classes == 1 else i % classes
        if kind % 2 == 0:
            img[(abs(yy - cy) <= r) & (abs(xx - cx) <= r)] = (230, 60, 40)
        else:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (40, 200, 230)
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def make_teacher_images(root: Path, n: int, seed: int = 1234) -> Path:
    """Samples of a fixed random generator of the tiny architecture: a distribution G can match."""
    cfg = resolve_config(load_config(GeneratorTrainConfig, "tiny", family="generator"), 1)
    torch.manual_seed(seed)
    G = Generator(cfg.generator).eval()
    with torch.no_grad():
        images = to_uint8(G(torch.randn(n, G.z_dim), noise_mode="random"))
    (root / "all").mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / "all" / f"{i:04d}.png")
    return root


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread: the CPU is shared


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes")


def tiny(folder: Path, out: Path, *overrides: str) -> GeneratorTrainConfig:
    return load_config(GeneratorTrainConfig, "tiny", [f"data.root={folder}", f"run.out_dir={out}",
                                                      "run.progress=false", *overrides], family="generator")


def grid_tiles(path: Path, size: int) -> np.ndarray:
    grid = np.asarray(Image.open(path)).astype(np.float32) / 127.5 - 1
    return np.stack([grid[r : r + size, c : c + size] for r in range(0, grid.shape[0], size)
                     for c in range(0, grid.shape[1], size)])


def nn_distance(fakes: np.ndarray, reals: np.ndarray) -> float:
    """Mean over fakes of the RMS pixel distance to the nearest real image."""
    d = ((fakes[:, None] - reals[None]) ** 2).mean(axis=(2, 3, 4))
    return float(np.sqrt(d.min(axis=1)).mean())


def train_cmd(tmp_path: Path, *args: str) -> list[str]:
    """`viscoin generator train ARGS` in a new process."""
    return [sys.executable, "-m", "viscoin", "generator", "train", *args]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


# ----------------------------------------------------------------------------------------------
# Formulas (§2.2, §2.4, §2.5)


@pytest.mark.parametrize("res, gpus, batch, gamma, ema, fmaps, lr", [
    (32, 1, 32, 0.0064, 10, 0.5, 0.0025),
    (64, 1, 32, 0.0256, 10, 0.5, 0.0025),
    (128, 1, 32, 0.1024, 10, 0.5, 0.0025),
    (256, 1, 16, 0.8192, 5, 0.5, 0.0025),
    (512, 1, 8, 6.5536, 2.5, 1.0, 0.0025),
    (1024, 1, 4, 52.4288, 1.25, 1.0, 0.002),
    (256, 8, 64, 0.2048, 20, 0.5, 0.0025),
])
def test_auto_formulas_match_the_table(res, gpus, batch, gamma, ema, fmaps, lr):
    s = auto_settings(res, gpus)
    assert s["batch_size"] == batch and s["ema_kimg"] == ema and s["fmaps"] == fmaps and s["lr"] == lr
    assert s["r1_gamma"] == pytest.approx(gamma) and s["ema_rampup"] == 0.05 and s["map"] == 2
    assert s["mbstd"] == min(batch // gpus, 4)


def test_resolve_config_fills_auto_fields_and_networks():
    cfg = resolve_config(load_config(GeneratorTrainConfig, "auto", ["data.resolution=256"], family="generator"), 5)
    assert (cfg.batch_size, cfg.optim.lr, cfg.ema.kimg, cfg.ema.rampup, cfg.augment.kimg) == (16, 0.0025, 5, 0.05, 500)
    assert cfg.loss.r1_gamma == pytest.approx(0.8192)
    G, D = cfg.generator, cfg.discriminator
    assert G.mapping.num_layers == 2 and G.z_dim == G.w_dim == 512 and G.img_resolution == 256 and G.c_dim == 0
    assert G.synthesis.channel_base == D.channel_base == 16384 and D.img_resolution == 256
    assert G.synthesis.num_fp16_res == D.num_fp16_res == 4 and G.synthesis.conv_clamp == D.conv_clamp == 256
    big = resolve_config(load_config(GeneratorTrainConfig, "auto", ["data.resolution=512", "conditional=true",
                                                                    "init.source=x.pkl"], family="generator"), 5)
    assert big.generator.synthesis.channel_base == 32768 and big.generator.c_dim == big.discriminator.c_dim == 5
    assert big.ema.rampup is None and big.augment.kimg == 100  # fine-tuning: no ramp-up, faster ADA (§2.6)
    # The resolved config is itself a valid config (it is saved as config.yaml).
    assert GeneratorTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="loss.r1_gamma: 'auto' needs cfg_preset=auto"):
        resolve_config(load_config(GeneratorTrainConfig, None, ["cfg_preset=none", "batch_size=8", "optim.lr=0.002",
                                                                 "ema.kimg=1"], family="generator"), 1)
    with pytest.raises(ConfigError, match="run.precision=bf16-mixed"):
        resolve_config(load_config(GeneratorTrainConfig, "tiny", ["run.precision=bf16-mixed"], family="generator"), 1)
    assert cfg.run.precision == "32-true"  # auto: float32, with the networks' own float16 blocks on CUDA
    with pytest.raises(ConfigError, match="minibatch-stddev"):
        resolve_config(load_config(GeneratorTrainConfig, "tiny", ["batch_size=6"], family="generator"), 1)


def test_shipped_configs_load():
    for name, xflip, kimg in (("cub", 1.0, 2000), ("cars", 0.1, 1800)):
        cfg = load_config(GeneratorTrainConfig, name, family="generator")
        assert cfg.batch_size == 16 and cfg.generator.mapping.num_layers == 2 and cfg.augment.mode == "ada"
        assert cfg.augment.xflip == xflip and cfg.kimg == kimg
    assert load_config(GeneratorTrainConfig, "auto", family="generator").cfg_preset == "auto"


def test_lazy_regularisation_adam_settings():
    G_opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], GanOptimConfig(lr=0.0025), reg_interval=4)
    D_opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], GanOptimConfig(lr=0.0025), reg_interval=16)
    g, d = G_opt.param_groups[0], D_opt.param_groups[0]
    assert g["lr"] == pytest.approx(0.002) and g["betas"] == (0.0, pytest.approx(0.99199197, abs=1e-8))
    assert d["lr"] == pytest.approx(0.00235294, abs=1e-8) and d["betas"] == (0.0, pytest.approx(0.99058546, abs=1e-8))
    assert g["eps"] == 1e-8


def test_ema_formula():
    assert ema_beta(0, 16, 5, 0.05) == 0.0  # first iteration with ramp-up: G_ema = G
    assert ema_beta(10**7, 16, 5, 0.05) == pytest.approx(0.99778, abs=1e-5)  # 0.5 ** (16 / 5000)
    assert ema_beta(1000, 16, 5, 0.05) == pytest.approx(0.5 ** (16 / 50))  # ramping up: 0.05 * 1000 images
    assert ema_beta(0, 16, 5, None) == pytest.approx(0.5 ** (16 / 5000))
    G, G_ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    G.register_buffer("w_avg", torch.ones(2))
    G_ema.register_buffer("w_avg", torch.zeros(2))
    p, p_ema = G.weight.detach().clone(), G_ema.weight.detach().clone()
    update_ema(G_ema, G, 0.9)
    assert torch.allclose(G_ema.weight, p + 0.9 * (p_ema - p)) and torch.equal(G_ema.w_avg, G.w_avg)


def test_r1_penalty_equals_the_hand_computed_value():
    class Quadratic(torch.nn.Module):  # D(x) = 0.5 sum(a x^2): dD/dx = a x
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(3.0))

        def forward(self, x, c=None, fp16=False):
            return 0.5 * (self.a * x.square()).sum(dim=[1, 2, 3])[:, None]

    x = torch.randn(4, 3, 2, 2)
    penalty, logits = r1_penalty(Quadratic(), None, x, None)
    assert torch.allclose(penalty, 9 * x.square().sum(dim=[1, 2, 3]))
    assert torch.allclose(logits[:, 0], 1.5 * x.square().sum(dim=[1, 2, 3]))
    penalty.mean().backward()  # the penalty is differentiable in D's parameters (create_graph)


def test_path_length_penalty_matches_the_jacobian():
    A = torch.randn(3 * 4 * 4, 5)                       # img = A w, the same w in both ws slots
    ws = torch.randn(2, 2, 5, requires_grad=True)
    img = (ws.sum(dim=1) @ A.T).reshape(2, 3, 4, 4)
    torch.manual_seed(7)
    penalty, new_mean = path_length_penalty(img, ws, torch.tensor(0.5), decay=0.01)
    torch.manual_seed(7)
    y = torch.randn(2, 3, 4, 4) / 4                     # / sqrt(H W)
    lengths = (y.reshape(2, -1) @ A).square().sum(dim=1).sqrt()  # each of the 2 ws gets A^T y
    mean = 0.5 + 0.01 * (lengths.mean() - 0.5)
    assert torch.allclose(new_mean, mean) and torch.allclose(penalty, (lengths - mean).square())


def test_style_mixing_and_w_avg_tracking():
    cfg = resolve_config(load_config(GeneratorTrainConfig, "tiny", family="generator"), 1)
    G = Generator(cfg.generator).train()
    z = torch.randn(4, G.z_dim)
    ws = MixingGenerator(G, 0.0)(z, None)[1]
    assert torch.equal(ws, ws[:, :1].expand_as(ws))    # no mixing: one w for every layer
    w_avg = G.w_avg.clone()
    mixed = MixingGenerator(G, 1.0)(z, None)[1]
    cut = int((mixed != mixed[:, :1]).any(dim=2).any(dim=0).float().argmax())
    assert 1 <= cut < G.num_ws                           # layers from the cutoff on come from another z
    assert torch.allclose(mixed[:, :cut], G.mapping(z, None, update_w_avg=False)[:, :cut])
    expected = G.mapping(z, None, update_w_avg=False)[:, 0].mean(0).lerp(w_avg, 0.995)
    assert torch.allclose(G.w_avg, expected)             # w_avg moved once (the mixing call does not update it)


def test_gan_dataset_mirror_and_repeat(shapes):
    base = build_dataset(DataConfig(root=str(shapes), resolution=16), "train", augment=False)
    ds = GanImages(base, mirror=True, min_len=1)
    assert len(ds) == 2 * len(base)
    assert torch.equal(ds[len(base) + 3]["image"], base[3]["image"].flip(2))
    few = GanImages(base, mirror=False, min_len=10 * len(base) + 1)
    assert len(few) == 11 * len(base) and torch.equal(few[len(base) + 2]["image"], base[2]["image"])


# ----------------------------------------------------------------------------------------------
# Training runs


def test_training_on_shapes_gets_closer_to_the_data(shapes, tmp_path):
    """300 iterations (2.4 kimg): the samples move towards the training images and the trained D's
    margin between held-out reals and samples shrinks from the initial G's samples to the final G's."""
    out = tmp_path / "run"
    result = train_generator(tiny(shapes, out, "kimg=2.4", "samples.grid=32", "augment.kimg=10", "run.log_every=25"))
    assert result["iterations"] == 300 and result["kimg"] == 2.4
    for name in ("G_ema", "G", "D"):
        assert (out / name / "config.json").is_file()
    assert json.loads((out / "D" / "config.json").read_text())["extra"]["augment_p"] == result["augment_p"]
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 300
    assert (out / "samples" / "reals.png").is_file() and list((out / "logs" / "tensorboard").glob("events.*"))
    logged = (out / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("loss/G", "loss/D", "loss/r1", "augment/p", "augment/rt", "kimg", "speed/img_per_s"):
        assert key in logged

    train = build_dataset(DataConfig(root=str(shapes), resolution=16), "train", augment=False)
    reals = np.stack([train[i]["image"].permute(1, 2, 0).numpy() for i in range(len(train))])
    grids = sorted((out / "samples").glob("fakes*.png"))
    assert [g.name for g in grids] == ["fakes000000.000.png", "fakes000001.000.png", "fakes000002.000.png",
                                       "fakes000002.400.png"]
    first, last = grid_tiles(grids[0], 16), grid_tiles(grids[-1], 16)
    d0, d1 = nn_distance(first, reals), nn_distance(last, reals)
    assert d1 < 0.75 * d0, (d0, d1)  # seeds 0-4: ratios 0.40-0.60

    D = load_network(out / "D").eval()
    test = build_dataset(DataConfig(root=str(shapes), resolution=16), "test", augment=False)
    held_out = torch.stack([test[i]["image"] for i in range(4 * (len(test) // 4))])
    with torch.no_grad():
        real_score = D(held_out).mean()
        margin = [real_score - D(torch.from_numpy(f).permute(0, 3, 1, 2).contiguous()).mean() for f in (first, last)]
    assert margin[1] < margin[0], margin


@pytest.fixture(scope="module")
def teacher_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    return make_teacher_images(root / "few", 4), make_teacher_images(root / "many", 512)


def test_ada_p_rises_on_a_tiny_dataset_and_stays_low_otherwise(teacher_data, tmp_path):
    """3 training images: D memorises them and p rises; 400 samples of a distribution G can
    represent: D cannot be sure of the reals and p stays at 0 (short augment.kimg to be quick)."""
    p = {}
    for name, root in zip(("few", "many"), teacher_data):
        out = tmp_path / name
        train_generator(tiny(root, out, "kimg=1.2", "augment.kimg=1", "samples.every_kimg=0", "run.log_every=10"))
        rows = [line.split(",") for line in (out / "logs" / "csv" / "metrics.csv").read_text().splitlines()]
        col = rows[0].index("augment/p")
        series = [float(r[col]) for r in rows[1:] if r[col]]
        p[name] = float(np.mean(series[len(series) // 2 :]))  # second half of the run
    assert p["few"] > 0.02 and p["many"] < 0.01, p  # seeds 0-4: few 0.048-0.096, many 0


def test_kill_9_then_resume_continues_exactly(shapes, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--config", "tiny", "--data", str(shapes), "run.progress=false", "run.ckpt_every=5", "kimg=0.32",
            "loss.pl_weight=2", "augment.kimg=1", "samples.every_kimg=0.16"]
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(tmp_path, *args, f"run.out_dir={ref}"), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(tmp_path, *args, f"run.out_dir={run}"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text() or "{}").get("step", 0) >= 15:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "G_ema").exists()
    killed_at = json.loads(latest.read_text())["step"]
    assert 15 <= killed_at < 40

    res = subprocess.run(train_cmd(tmp_path, *args, f"run.out_dir={run}", "--resume"), env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout + res.stderr
    for name in ("G_ema", "G", "D"):
        a, b = weights(ref / name), weights(run / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k} differs after resuming from iteration {killed_at}"
    m_ref, m_run = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    for key in ("kimg", "iterations", "augment_p", "augment_rt", "pl_mean"):
        assert m_ref[key] == m_run[key], key
    assert m_run["augment_p"] > 0
    grids = sorted(p.name for p in (ref / "samples").glob("fakes*.png"))
    assert grids == ["fakes000000.000.png", "fakes000000.160.png", "fakes000000.320.png"]
    for grid in grids:
        assert (run / "samples" / grid).read_bytes() == (ref / "samples" / grid).read_bytes()


def test_fine_tuning_starts_from_the_official_pickle_exactly(shapes, tmp_path):
    out = tmp_path / "ft"
    cfg = tiny(shapes, out, f"init.source={MOCK_G32}", "init.architecture=source", "kimg=0", "batch_size=4")
    result = train_generator(cfg)
    assert result["iterations"] == 0 and result["augment_p"] == 0.125  # the pickle's p
    nets = load_official(MOCK_G32)
    for name in ("G", "G_ema", "D"):
        ours, theirs = weights(out / name), getattr(nets, name).state_dict()
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), f"{name}.{k}"
    saved = json.loads((out / "G_ema" / "config.json").read_text())
    assert saved["config"]["img_resolution"] == 32 and saved["extra"]["augment_p"] == 0.125

    # A few steps from there: training moves away from the pickle and ADA continues from 0.125.
    more = tmp_path / "ft2"
    result = train_generator(tiny(shapes, more, f"init.source={MOCK_G32}", "init.architecture=source",
                                  "kimg=0.032", "batch_size=4", "augment.kimg=1"))
    step = 4 * 4 / 1000                                   # batch * interval / (augment.kimg * 1000)
    moves = (result["augment_p"] - 0.125) / step          # two adjustments in 8 iterations
    assert result["iterations"] == 8 and abs(moves - round(moves)) < 1e-4 and abs(moves) <= 2
    key = "synthesis.b4.conv1.weight"
    assert not torch.equal(weights(more / "G")[key], nets.G.state_dict()[key])

    # Our own run folder as the source, networks built from the config (copied by name, §2.6).
    again = tmp_path / "ft3"
    g32 = ["generator.z_dim=64", "generator.w_dim=64", "generator.synthesis.channel_base=256",
           "generator.synthesis.channel_max=64", "discriminator.channel_base=256", "discriminator.channel_max=64",
           "data.resolution=32"]
    train_generator(tiny(shapes, again, f"init.source={more}", "kimg=0", "batch_size=4", *g32))
    for name in ("G", "G_ema", "D"):
        a, b = weights(more / name), weights(again / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with pytest.raises(ConfigError, match="tensors of different shapes"):
        train_generator(tiny(shapes, tmp_path / "bad", f"init.source={MOCK_G32}", "kimg=0"))

    # A single generator folder (`viscoin generator import`): G and G_ema from it, D fresh, p from its extras.
    imported = import_official(MOCK_G32, tmp_path / "imported")
    single = tmp_path / "ft4"
    result = train_generator(tiny(shapes, single, f"init.source={imported}", "init.architecture=source", "kimg=0",
                                  "batch_size=4"))
    assert result["augment_p"] == 0.125
    for name in ("G", "G_ema"):
        a, b = weights(single / name), nets.G_ema.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_conditional_fine_tuning_without_augmentation_pipe(tmp_path):
    """cond16 (3 classes, saved without an AugmentPipe): labels come from the class folders."""
    data = make_shapes(tmp_path / "three", n=24, classes=3)
    out = tmp_path / "cond"
    result = train_generator(tiny(data, out, f"init.source={MOCK_COND16}", "init.architecture=source",
                                  "conditional=true", "kimg=0.032", "loss.pl_weight=2"))
    assert result["iterations"] == 4 and result["augment_p"] == 0.0 and result["classes"] == ["c0", "c1", "c2"]
    G = load_network(out / "G_ema")
    assert G.c_dim == 3 and G.img_resolution == 16
    with pytest.raises(ConfigError, match="c_dim 3/3, but the data gives 0"):
        train_generator(tiny(data, tmp_path / "uncond", f"init.source={MOCK_COND16}", "init.architecture=source"))


def test_command_line_arguments(shapes, tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["generator", "train", "--config", "tiny", "--data", str(shapes), f"run.out_dir={tmp_path / 'r'}",
                              "run.progress=false", "kimg=0.016", "fid.every_kimg=1"])
    assert cmd_generator_train(args) == 0
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert f"root: {shapes}" in saved and "cfg_preset: none" in saved
    printed = capsys.readouterr().out
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        assert "notice: FID skipped" in printed
    with pytest.raises(ConfigError, match="augment.mode"):
        cmd_generator_train(parser.parse_args(["generator", "train", "--config", "tiny", "--data", str(shapes), "augment.mode=sometimes"]))
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        cmd_generator_train(parser.parse_args(["generator", "train", "--config", "tiny", "--data", str(shapes),
                                             f"run.out_dir={tmp_path / 'none'}", "--resume"]))


def test_fid_every_n_kimg_with_a_stand_in_feature_extractor(shapes, tmp_path, monkeypatch):
    """The FID schedule and bookkeeping, with a tiny stand-in for the Inception features (none offline)."""
    from viscoin.stylegan import train

    calls = []

    class StandIn(torch.nn.Module):
        def forward(self, images):
            assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32
            calls.append(len(images))
            return images.mean(dim=(2, 3))  # mean colour: a 3-d feature

    monkeypatch.setattr(train.Fid, "create", staticmethod(lambda num, device, printer: train.Fid(StandIn(), num)))
    out = tmp_path / "fid"
    result = train_generator(tiny(shapes, out, "kimg=0.032", "fid.every_kimg=0.016", "fid.num_images=20"))
    assert [h["kimg"] for h in result["fid"]] == [0.016, 0.032]
    assert all(h["fid"] >= 0 and math.isfinite(h["fid"]) for h in result["fid"])
    assert calls == [20, 20, 20]  # real features once (20 of the training images), 20 fakes per evaluation
    assert "fid" in (out / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")


def test_fid_is_skipped_with_a_notice_without_inception_weights(tmp_path, monkeypatch):
    from viscoin.stylegan import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: nothing to load, nothing downloaded
    printed = []
    assert train.Fid.create(10, torch.device("cpu"), printed.append) is None
    assert printed and printed[0].startswith("notice: FID skipped") and "weights-inception" in printed[0]


def test_two_process_ddp_on_cpu(shapes, tmp_path):
    """DDP through Fabric (gloo): both ranks train the same networks, rank 0 writes."""
    out = tmp_path / "ddp"
    res = subprocess.run(train_cmd(tmp_path, "--config", "tiny", "--data", str(shapes), f"run.out_dir={out}",
                                   "run.progress=false", "run.devices=2", "batch_size=16", "kimg=0.128",
                                   "loss.pl_weight=2", "augment.kimg=1"),
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stdout + res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 8 and metrics["kimg"] == 0.128 and metrics["augment_p"] > 0
    assert math.isfinite(metrics["pl_mean"]) and (out / "G_ema" / "weights.safetensors").is_file()


def test_resume_may_extend_kimg_and_train_exactly_as_the_longer_run(shapes, tmp_path):
    """`kimg` may change on --resume (nothing depends on it): 0.16 then 0.32 kimg == 0.32 kimg straight."""
    args = ("run.ckpt_every=5", "augment.kimg=1", "samples.every_kimg=0")
    straight = tmp_path / "straight"
    train_generator(tiny(shapes, straight, "kimg=0.32", *args))
    run = tmp_path / "extended"
    short = train_generator(tiny(shapes, run, "kimg=0.16", *args))
    assert short["kimg"] == pytest.approx(0.16)
    out = train_generator(tiny(shapes, run, "kimg=0.32", *args), resume=True)
    assert out["kimg"] == pytest.approx(0.32)
    for name in ("G_ema", "G", "D"):
        a, b = weights(straight / name), weights(run / name)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k} differs after extending the run"
    # Other keys stay refused on resume, naming the key.
    with pytest.raises(ConfigError, match="loss.r1_gamma"):
        train_generator(tiny(shapes, run, "kimg=0.48", "loss.r1_gamma=3", *args), resume=True)


def test_resume_does_not_need_an_init_source_that_is_gone(shapes, tmp_path):
    """A fine-tuning run's weights are in its checkpoints: it resumes, exactly, after its init.source was moved
    away, unless init.architecture=source (the networks' shapes come from the source; the error says so)."""
    args = ("run.ckpt_every=5", "augment.kimg=1", "samples.every_kimg=0")
    source = tmp_path / "source"
    train_generator(tiny(shapes, source, "kimg=0.08", *args))
    straight = tmp_path / "straight"
    train_generator(tiny(shapes, straight, f"init.source={source}", "kimg=0.32", *args))
    run = tmp_path / "run"
    train_generator(tiny(shapes, run, f"init.source={source}", "kimg=0.16", *args))
    source.rename(tmp_path / "moved")
    out = train_generator(tiny(shapes, run, f"init.source={source}", "kimg=0.32", *args), resume=True)
    assert out["kimg"] == pytest.approx(0.32)
    for name in ("G_ema", "G", "D"):
        a, b = weights(straight / name), weights(run / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # A fresh run still needs its source, and so does a resumed one that builds its networks from it.
    with pytest.raises(ConfigError, match="init.source"):
        train_generator(tiny(shapes, tmp_path / "fresh", f"init.source={source}", "kimg=0.16", *args))
    (tmp_path / "moved").rename(source)
    arch = tmp_path / "arch"
    train_generator(tiny(shapes, arch, f"init.source={source}", "init.architecture=source", "kimg=0.16", *args))
    source.rename(tmp_path / "moved")
    with pytest.raises(ConfigError, match="--resume still needs it because init.architecture=source"):
        train_generator(tiny(shapes, arch, f"init.source={source}", "init.architecture=source", "kimg=0.32", *args),
                        resume=True)


def test_export_writes_the_latest_checkpoints_generator(shapes, tmp_path, capsys):
    """`viscoin generator export RUN --out DIR`: G_ema (or G) of the last checkpoint, as the end of training writes it."""
    run = tmp_path / "run"
    train_generator(tiny(shapes, run, "kimg=0.16", "run.ckpt_every=5", "samples.every_kimg=0"))
    out = tmp_path / "exported"
    parser = build_parser()
    args = parser.parse_args(["generator", "export", str(run), "--out", str(out)])
    assert args.func(args) == 0
    assert "at 0.2 kimg (step 20," in capsys.readouterr().out.splitlines()[-1]   # 0.16 kimg at batch 8
    a, b = weights(run / "G_ema"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((out / "config.json").read_text())
    assert info["extra"]["kimg"] == pytest.approx(0.16) and info["extra"]["step"] == 20
    assert info["extra"]["data"]["root"] == str(shapes)
    G = load_network(out)
    assert isinstance(G, Generator) and G.img_resolution == 16
    # G (not G_ema) on request; a non-empty folder only with --overwrite; a folder without a run is named.
    args = parser.parse_args(["generator", "export", str(run), "--out", str(out), "--which", "G"])
    with pytest.raises(ValueError, match=str(out)):
        args.func(args)
    args = parser.parse_args(["generator", "export", str(run), "--out", str(out), "--which", "G", "--overwrite"])
    assert args.func(args) == 0
    a, b = weights(run / "G"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    args = parser.parse_args(["generator", "export", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(Exception, match="no training checkpoint"):
        args.func(args)
    assert not (tmp_path / "x").exists()

    # --which all: G_ema/, G/ and D/ of the checkpoint, a folder that init.source branches from exactly
    both = tmp_path / "both"
    args = parser.parse_args(["generator", "export", str(run), "--out", str(both), "--which", "all"])
    assert args.func(args) == 0
    assert "(G_ema/, G/ and D/)" in capsys.readouterr().out
    assert sorted(p.name for p in both.iterdir()) == ["D", "G", "G_ema"]
    branch = tmp_path / "branch"
    train_generator(tiny(shapes, branch, f"init.source={both}", "kimg=0", "samples.every_kimg=0"))
    for name in ("G_ema", "G", "D"):
        a, b = weights(run / name), weights(branch / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((both / "D" / "config.json").read_text())["extra"]["step"] == 20


def test_class_grouped_images_hold_one_class_per_group_and_every_image(tmp_path):
    data = make_shapes(tmp_path / "three", n=30, classes=3)                     # 10 images per class
    images = build_dataset(DataConfig(kind="folder", root=str(data), resolution=16), "train", augment=False)
    per_class = torch.bincount(torch.tensor([y for _, y in images.samples])).tolist()
    grouped = ClassGroupedImages(GanImages(images, mirror=True, min_len=8), group=4, seed=0, min_items=1)
    assert grouped.groups == ClassGroupedImages(GanImages(images, True, 8), 4, 0, 1).groups       # seeded
    assert grouped.groups != ClassGroupedImages(GanImages(images, True, 8), 4, 1, 1).groups
    seen = []
    for k in range(len(grouped)):
        item = grouped[(k, 123)]                                               # the loader's (index, seed) keys
        assert item["image"].shape == (4, 3, 16, 16) and item["label"].unique().numel() == 1
        seen += grouped.groups[k]
    # every image and its mirrored copy, each class's last group filled from its start
    assert set(seen) == set(range(2 * len(images)))
    assert len(grouped) == sum(math.ceil(2 * n / 4) for n in per_class)
    assert len(ClassGroupedImages(GanImages(images, False, 8), 4, 0, min_items=100)) >= 100          # repeated
    # ungroup: D's strided minibatch-stddev groups (sample i in group i mod B) are the B loaded groups
    labels = torch.tensor([[0, 0, 0, 0], [2, 2, 2, 2], [1, 1, 1, 1]])
    flat = ungroup(labels)
    assert flat.tolist() == [0, 2, 1] * 4
    assert all(int(flat[i]) == int(flat[i % 3]) for i in range(12))


def test_class_groups_give_every_minibatch_stddev_group_one_class(tmp_path, monkeypatch):
    """With class_groups, every batch D sees (reals, fakes, R1) has one class in each of its strided groups."""
    import viscoin.stylegan.train as train_module

    data = make_shapes(tmp_path / "three", n=24, classes=3)
    seen: list[torch.Tensor] = []
    real_D = train_module.run_D

    def recording_run_D(D, pipe, img, c, fp16=False):
        seen.append(c.argmax(dim=1))
        return real_D(D, pipe, img, c, fp16)

    monkeypatch.setattr(train_module, "run_D", recording_run_D)
    train_generator(tiny(data, tmp_path / "grouped", "conditional=true", "class_groups=true", "kimg=0.048",
                         "discriminator.epilogue.mbstd_group_size=4"))
    assert len(seen) >= 3 * 6                                                  # G, D fake, D real x 6 iterations
    for classes in seen:
        b = len(classes) // 4
        assert len(classes) == 8 and all(int(classes[i]) == int(classes[i % b]) for i in range(len(classes)))
    assert any(len(set(c.tolist())) > 1 for c in seen)                         # groups differ in class
    # Without it, the official batches: some group mixes classes.
    seen.clear()
    train_generator(tiny(data, tmp_path / "plain", "conditional=true", "kimg=0.048"))
    assert any(any(int(c[i]) != int(c[i % (len(c) // 4)]) for i in range(len(c))) for c in seen)
    # Refused: without labels, or with groups of one image.
    with pytest.raises(ConfigError, match="class_groups: needs conditional"):
        tiny(data, tmp_path / "x", "class_groups=true")
    with pytest.raises(ConfigError, match="class_groups: the minibatch-stddev group"):
        train_generator(tiny(data, tmp_path / "y", "conditional=true", "class_groups=true",
                             "discriminator.epilogue.mbstd_group_size=1"))


def test_transitional_conditioning_blends_the_labels_from_uniform_to_one_hot(tmp_path, monkeypatch):
    """transition_kimg=[start, end]: G and D see (1 - w)/C + w * one-hot, w rising from 0 to 1."""
    import viscoin.stylegan.train as train_module

    assert [transition_weight(k, 2.0, 6.0) for k in (0.0, 2.0, 3.0, 6.0, 9.0)] == [0.0, 0.0, 0.25, 1.0, 1.0]
    assert transition_weight(0.0, 0.0, 0.0) == 1.0                                   # off
    c = torch.eye(4)[[0, 2]]
    assert torch.allclose(blend_labels(c, 0.0), torch.full((2, 4), 0.25))
    assert torch.allclose(blend_labels(c, 0.5), torch.tensor([[0.625, 0.125, 0.125, 0.125],
                                                               [0.125, 0.125, 0.625, 0.125]]))
    assert blend_labels(c, 1.0) is c
    # At weight 0 a conditional G draws the same image whatever the class: it is unconditional.
    G = Generator(GeneratorConfig(z_dim=8, c_dim=3, w_dim=8, img_resolution=8, mapping=MappingConfig(num_layers=1),
                                  synthesis=SynthesisConfig(channel_base=64, channel_max=8, use_noise=False))).eval()
    z = torch.randn(1, 8).repeat(3, 1)
    same = G(z, blend_labels(torch.eye(3), 0.0))
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])
    assert not torch.allclose(G(z, torch.eye(3))[0], G(z, torch.eye(3))[1])
    # In training: every label D sees is the blend of the current weight (6 iterations of 8 images, 0.048 kimg).
    data = make_shapes(tmp_path / "three", n=24, classes=3)
    seen: list[torch.Tensor] = []
    real_D = train_module.run_D

    def recording_run_D(D, pipe, img, c, fp16=False):
        seen.append(c.clone())
        return real_D(D, pipe, img, c, fp16)

    monkeypatch.setattr(train_module, "run_D", recording_run_D)
    train_generator(tiny(data, tmp_path / "blend", "conditional=true", "kimg=0.048", "transition_kimg=[0.008,0.040]"))
    weights_seen = sorted({round(float(c.max(dim=1).values[0]) - float(c.min(dim=1).values[0]), 4) for c in seen})
    # before each of the 6 steps cur_nimg is 0, 8, ..., 40 images: w = 0, 0, 0.25, 0.5, 0.75, 1
    assert weights_seen == [0.0, 0.25, 0.5, 0.75, 1.0]
    for c in seen:
        assert torch.allclose(c.sum(dim=1), torch.ones(len(c)))
    # class_groups start at the end of the transition: mixed groups while the labels are blended, one class after.
    seen.clear()
    train_generator(tiny(data, tmp_path / "both", "conditional=true", "kimg=0.048", "class_groups=true",
                         "transition_kimg=[0.016,0.032]", "discriminator.epilogue.mbstd_group_size=2"))
    half = [c.argmax(dim=1) for c in seen if abs(float(c.max() - c.min()) - 0.5) < 1e-6]      # weight 0.5: step 4
    full = [c.argmax(dim=1) for c in seen if float(c.max()) == 1.0]                              # weight 1: steps 5, 6
    assert len(half) >= 2 and len(full) >= 4
    one_class = lambda k: all(int(k[i]) == int(k[i % (len(k) // 2)]) for i in range(len(k)))   # noqa: E731
    assert all(one_class(k) for k in full)
    assert not all(one_class(k) for k in half)
    assert len(half) == 3 and not one_class(half[2])              # G's fakes, D's fakes, D's reals (shuffled)
    with pytest.raises(ConfigError, match="transition_kimg: needs conditional"):
        tiny(data, tmp_path / "x", "transition_kimg=[0,10]")
    with pytest.raises(ConfigError, match="transition_kimg: expected"):
        tiny(data, tmp_path / "x", "conditional=true", "transition_kimg=[10,5]")


def test_mode_seeking_penalty_rewards_different_drawings_of_one_class_not_a_tint(shapes, tmp_path):
    """1 / (d_img / d_z + eps) over the same-class pairs (i, i + N/2); a background tint is no difference."""
    z = torch.zeros(4, 8)
    z[2:] = 1.0                                                                  # d_z = 1 for both pairs
    bird = torch.full((1, 3, 32, 32), -0.5)
    bird[:, 0, 8:16, 8:20] = 0.9
    tinted = torch.where(bird == -0.5, torch.tensor(0.3), bird)                 # only the background changes
    moved = torch.roll(bird, shifts=(10, 6), dims=(2, 3))
    same_tint = mode_seeking_penalty(torch.cat([bird, bird, tinted, tinted]), z, None)
    same_move = mode_seeking_penalty(torch.cat([bird, bird, moved, moved]), z, None)
    d_move = 2 * 24 * 1.4 / 768                                                  # mean |difference| of the features
    assert float(same_move) == pytest.approx(1 / (d_move + 1e-5), rel=1e-4)
    assert float(same_tint) > 1.5 * float(same_move)
    # only pairs of one class count; none: None
    c = torch.eye(3)[[0, 1, 0, 2]]
    assert float(mode_seeking_penalty(torch.cat([bird, bird, moved, tinted]), z, c)) == pytest.approx(float(same_move))
    assert mode_seeking_penalty(torch.cat([bird, bird, moved, moved]), z, torch.eye(4)) is None
    # in training: logged, with a gradient into G
    out = tmp_path / "seeking"
    train_generator(tiny(shapes, out, "kimg=0.048", "loss.mode_seeking=0.01", "run.log_every=1"))
    rows = list(csv.DictReader(open(out / "logs" / "csv" / "metrics.csv")))
    values = [float(r["loss/mode_seeking"]) for r in rows if r.get("loss/mode_seeking")]
    assert len(values) == 6 and all(math.isfinite(v) and v > 0 for v in values)
    with pytest.raises(ConfigError, match="loss.mode_seeking"):
        tiny(shapes, out, "loss.mode_seeking=-1")
