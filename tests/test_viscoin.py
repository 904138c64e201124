"""The VisCoIN model: shapes, gradients, frozen parts, losses, Ω's linearity, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_f, tiny_G, tiny_model
from viscoin.model import LossConfig, VisCoIN, VisCoINConfig, load_viscoin, save_viscoin, viscoin_losses
from viscoin.model.concepts import ConceptTranslator
from viscoin.model.perceptual import build_perceptual
from viscoin.model.train import training_losses
from viscoin.stylegan.generator import random_labels
from viscoin.utils.config import ConfigError
from viscoin.utils.io import CheckpointError


@pytest.mark.parametrize("res, k, g_res", [(32, 4, 32), (64, 8, 64), (64, 3, 32)])
def test_shapes(res, k, g_res):
    model = tiny_model(res, k, g_res=g_res)
    x = torch.rand(2, 3, res, res) * 2 - 1
    phi, support = model.concepts(x)
    assert phi.shape == (2, k, 3, 3) and (phi >= 0).all()
    assert support.shape == (2, 9 * k)
    assert model.predict(x).shape == (2, 3) and torch.allclose(model.predict(x).sum(1), torch.ones(2))
    ws = model.latents(phi, support)
    assert ws.shape == (2, model.G.num_ws, 16)
    assert model.reconstruct(x).shape == (2, 3, res, res)  # G's output resized to f's resolution when they differ
    out = model(x)
    assert out.x_rec.shape == (2, 3, res, res) and out.logits_g.shape == (2, 3)


def test_shape_checks_name_the_input():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"x: expected images \[N, 3, 32, 32\]"):
        model.concepts(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"Φ: expected \[N, 4, 3, 3\]"):
        model.latents(torch.zeros(1, 5, 3, 3), torch.zeros(1, 36))
    with pytest.raises(ValueError, match=r"Φ': expected \[1, 36\]"):
        model.generate(torch.zeros(1, 4, 3, 3), None)


def test_only_trainable_parts_get_gradients_and_frozen_bn_stats_stay():
    model = tiny_model()
    model.train()
    bn = model.f.net.bn1
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    terms = viscoin_losses(model(x), x, LossConfig(beta=1.0, perceptual="classifier"),
                           build_perceptual("classifier", classifier=model.f), model.psi.orthogonality_loss())
    terms["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.f.parameters()) and all(p.grad is None for p in model.G.parameters())
    assert not model.f.training and not model.G.training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    # f and G are not part of the trainable state.
    assert all(k.split(".")[0] in ("psi", "theta", "omega") for k in model.state_dict())


def test_gradient_flows_through_G_and_f():
    model = tiny_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    # γ term alone: only through f(x̃) -> G -> Ω
    cfg = LossConfig(alpha=0, beta=0, l1=0, l2=0, delta=0, latent=0, orthogonality=False, gamma=1.0)
    viscoin_losses(out, x, cfg, None, None)["total"].backward()
    assert model.omega.layers[4].weight.grad.abs().sum() > 0
    g = model.theta.linear.weight.grad
    assert g is None or not g.any()  # Θ plays no part in that term


def test_omega_is_linear_in_each_concept():
    model = tiny_model(k=4).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        phi, support = model.concepts(x)
        base = model.latents(phi, support)
        j, lam = int(phi.sum(dim=(0, 2, 3)).argmax()), 3.0
        assert phi[:, j].sum() > 0
        scaled = phi.clone()
        scaled[:, j] *= lam
        moved = model.latents(scaled, support)
        # Expected change: (λ − 1) times concept j's part of each Φ-fed layer; Φ'-fed vectors do not move.
        for i, layer in enumerate(model.omega.layers):
            w = layer.weight.view(layer.out_features, 4, 9)
            contrib = torch.einsum("ok,nk->no", w[:, j], phi[:, j].flatten(1))
            expected = torch.zeros_like(contrib) if model.omega.from_support[i] else (lam - 1) * contrib
            assert torch.allclose(moved[:, i] - base[:, i], expected, atol=1e-5)
    assert model.omega.from_support == [True, True, True, False, False, False, True, True]


def test_zero_initialised_omega_keeps_cells_that_never_fire_out_of_the_latents():
    """omega_init=zeros: a concept-map cell that is 0 on every training input gets no gradient, so its Ω
    weights stay 0 under Adam, and a constant-map edit (consistency, ground truth) moves W+ only through
    the cells that fired; with PyTorch's default init those weights stay random."""
    torch.manual_seed(0)
    target = torch.randn(16, 3, 8)
    phi = torch.rand(16, 2, 3, 3)
    phi[:, 0, 0, :] = 0                                        # concept 0's top row never fires
    dead = torch.zeros(2, 3, 3, dtype=torch.bool)
    dead[0, 0, :] = True
    for init in ("zeros", "default"):
        omega = ConceptTranslator(2, 3, 8, use_support=False, init=init)
        if init == "zeros":
            assert all(not layer.weight.any() and not layer.bias.any() for layer in omega.layers)
        opt = torch.optim.Adam(omega.parameters(), lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            (omega(phi, None) - target).square().mean().backward()
            opt.step()
        for layer in omega.layers:
            assert layer.weight[:, ~dead.flatten()].abs().min(dim=0).values.gt(0).all()      # the live cells learnt
            assert (layer.weight[:, dead.flatten()] == 0).all() == (init == "zeros")
        const = phi.clone()
        const[:, 0] = 5.0                                      # φ_0 set to a constant map
        live_only = const.masked_fill(dead, 0.0)
        with torch.no_grad():
            same = torch.equal(omega(const, None), omega(live_only, None))
        assert same == (init == "zeros")
    with pytest.raises(ValueError, match="Ω init"):
        ConceptTranslator(2, 3, 8, use_support=False, init="normal")
    with pytest.raises(ConfigError, match="model.omega_init"):
        VisCoINConfig(omega_init="normal")
    model = VisCoIN(VisCoINConfig(num_concepts=4, adapter_channels=8, omega_init="zeros"), tiny_f(), tiny_G(32), 32)
    assert all(not layer.weight.any() for layer in model.omega.layers)


def test_no_support_branch_ablation():
    model = tiny_model(use_support=False)
    phi, support = model.concepts(torch.zeros(1, 3, 32, 32))
    assert support is None and not any(model.omega.from_support)
    assert model.generate(phi, None).shape == (1, 3, 32, 32)


def test_loss_terms_match_hand_computation():
    model = tiny_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    cfg = LossConfig(alpha=0.5, beta=0.0, gamma=0.1, delta=0.2)
    t = viscoin_losses(out, x, cfg, None, model.psi.orthogonality_loss())
    p_f = out.feats["logits"].softmax(1)
    assert torch.allclose(t["output_fidelity"], 0.5 * -(p_f * out.logits_g.log_softmax(1)).sum(1).mean())
    assert torch.allclose(t["rec_l2"], ((x - out.x_rec) ** 2).mean())
    assert torch.allclose(t["rec_l1"], (x - out.x_rec).abs().mean())
    assert torch.allclose(t["rec_classification"], 0.1 * -(p_f * out.feats_rec["logits"].log_softmax(1)).sum(1).mean())
    assert torch.allclose(t["sparsity"], 0.2 * out.phi.abs().mean())
    assert torch.allclose(t["latent"], out.offsets.pow(2).mean())
    v = torch.nn.functional.normalize(model.psi.concept_conv.weight.flatten(1).t(), dim=0)
    assert torch.allclose(t["orthogonality"], ((v.t() @ v - torch.eye(4)) ** 2).sum())
    assert torch.allclose(t["total"], sum(v for k, v in t.items() if k != "total"))


def test_loss_decreases_over_a_few_dozen_steps():
    model = tiny_model()
    model.train()
    perceptual = build_perceptual("classifier", classifier=model.f)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    losses = []
    for _ in range(40):
        t = viscoin_losses(model(x), x, LossConfig(beta=1.0, perceptual="classifier"), perceptual,
                           model.psi.orthogonality_loss())
        opt.zero_grad()
        t["total"].backward()
        opt.step()
        losses.append(t["total"].item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_checkpoint_round_trip_and_refuses_other_f_or_G(tmp_path):
    model = tiny_model().eval()
    save_viscoin(model, tmp_path / "m", tmp_path / "f", tmp_path / "G")
    back = load_viscoin(tmp_path / "m", classifier=tiny_f(), generator=tiny_G())
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.reconstruct(x), back.reconstruct(x))
    with pytest.raises(CheckpointError, match="trained with a different classifier"):
        load_viscoin(tmp_path / "m", classifier=tiny_f(seed=1), generator=tiny_G())
    with pytest.raises(CheckpointError, match="trained with a different generator"):
        load_viscoin(tmp_path / "m", classifier=tiny_f(), generator=tiny_G(seed=1))


def test_support_vectors_need_a_large_enough_generator():
    with pytest.raises(ValueError, match="leave none for Φ"):
        VisCoIN(VisCoINConfig(num_concepts=2, adapter_channels=4), tiny_f(), tiny_G(8), resolution=32)


def test_forward_and_losses_under_bf16_autocast():
    model = tiny_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        # autocast took effect: Ψ, Θ, Ω and G ran in bf16, not float32
        assert {out.phi.dtype, out.logits_g.dtype, out.x_rec.dtype} == {torch.bfloat16}
    assert not torch.equal(out.x_rec.float(), ref.x_rec) and torch.allclose(out.x_rec.float(), ref.x_rec, atol=0.1)
    terms = viscoin_losses(out, x, LossConfig(beta=0.0), None, model.psi.orthogonality_loss())
    assert terms["total"].dtype == torch.float32 and torch.isfinite(terms["total"])
    terms["total"].backward()
    assert model.omega.layers[4].weight.grad.abs().sum() > 0


def test_random_labels_are_uniform_one_hot_or_none():
    assert random_labels(0, 5) is None
    c = random_labels(4, 4000, generator=torch.Generator().manual_seed(0))
    assert c.shape == (4000, 4) and c.dtype == torch.float32
    assert torch.equal(c.sum(1), torch.ones(4000)) and set(c.unique().tolist()) == {0.0, 1.0}
    share = c.mean(0)
    assert torch.all((share > 0.22) & (share < 0.28)), share


def test_synthetic_batch_of_a_conditional_generator():
    """A class-conditional G (the shipped birds G) needs a class for each z of the synthetic batch."""
    G = tiny_G(c_dim=3)
    with pytest.raises(ValueError, match="conditional"):
        G.map(torch.randn(2, 16))
    model = VisCoIN(VisCoINConfig(num_concepts=4, adapter_channels=8), tiny_f(), G, resolution=32)
    x_real = torch.rand(2, 3, 32, 32) * 2 - 1
    x, out, losses = training_losses(model, model, x_real, 3, LossConfig(beta=0.0), None)
    assert x.shape == (5, 3, 32, 32) and torch.equal(x[:2], x_real)
    assert out.x_rec.shape == (5, 3, 32, 32) and torch.isfinite(losses["total"])
    torch.manual_seed(0)
    z = torch.randn(3, 16)
    with torch.no_grad():   # the drawn images are G(mapping(z, c)) for one-hot c
        expected = model.synthesize(G.map(z, random_labels(3, 3), truncation_psi=1.0))
    torch.manual_seed(0)
    x, _, _ = training_losses(model, model, x_real, 3, LossConfig(beta=0.0), None)
    assert torch.allclose(x[2:], expected, atol=1e-6)


def test_an_absurd_k_is_refused_before_anything_is_built():
    from viscoin.model.flaem import FlaemConfig
    from viscoin.model.flint import FlintConfig
    from viscoin.utils.config import ConfigError

    for config in (VisCoINConfig, FlintConfig, FlaemConfig):
        with pytest.raises(ConfigError, match=r"model.num_concepts: expected an integer in \[1, 4096\]"):
            config(num_concepts=10**9)
        with pytest.raises(ConfigError, match="model.num_concepts"):
            config(num_concepts=0)
    with pytest.raises(ConfigError, match="model.adapter_channels"):
        VisCoINConfig(adapter_channels=2**20)


# -- paper fidelity: Θ without bias, the reductions of the loss terms, G's noise ---------------------


def test_predictor_has_no_bias_by_default_as_in_the_paper():
    model = tiny_model().eval()
    assert VisCoINConfig().predictor_bias is False
    assert model.theta.linear.bias is None and model.predictor_weights()[1] is None
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    enc = model.encode(x)
    w = model.predictor_weights()[0]
    assert torch.allclose(enc.logits_g, model.pool(enc.phi) @ w.t(), atol=1e-6)   # g = Wᵀ·pool(Φ), nothing else
    # with no bias, a class's logit is exactly the sum of its concepts' contributions w_{c,j}·a_j
    c = enc.logits_g.argmax(1)
    contributions = model.pool(enc.phi) * w[c]
    assert torch.allclose(contributions.sum(1), enc.logits_g[torch.arange(3), c], atol=1e-5)
    assert model.relevance(enc.phi, c).shape == (3, model.num_concepts)
    with_bias = VisCoIN(VisCoINConfig(num_concepts=4, adapter_channels=8, predictor_bias=True), tiny_f(), tiny_G(32), 32)
    assert with_bias.theta.linear.bias is not None and with_bias.predictor_weights()[1] is not None


def test_a_checkpoint_from_before_the_bias_option_loads_with_its_bias(tmp_path):
    model = VisCoIN(VisCoINConfig(num_concepts=4, adapter_channels=8, predictor_bias=True), tiny_f(), tiny_G(32), 32)
    path = save_viscoin(model, tmp_path / "old", tmp_path / "f", tmp_path / "G")
    config = json.loads((path / "config.json").read_text())
    del config["config"]["model"]["predictor_bias"]              # as written before the option existed
    (path / "config.json").write_text(json.dumps(config))
    loaded = load_viscoin(path, classifier=model.f, generator=model.G)
    assert loaded.config.predictor_bias is True
    assert torch.equal(loaded.theta.linear.bias, model.theta.linear.bias)


def test_orthogonality_reduction_sum_is_eq5_and_mean_divides_by_k_squared():
    model = tiny_model(k=4)
    v = torch.nn.functional.normalize(model.psi.concept_conv.weight.flatten(1).t(), dim=0)
    frob = ((v.t() @ v - torch.eye(4)) ** 2).sum()
    assert torch.allclose(model.orthogonality_loss(), frob)
    assert torch.allclose(model.orthogonality_loss("sum"), frob)
    assert torch.allclose(model.orthogonality_loss("mean"), frob / 16)
    with pytest.raises(ValueError, match="orthogonality reduction"):
        model.orthogonality_loss("max")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for reduction, expected in (("sum", frob), ("mean", frob / 16)):
        cfg = LossConfig(beta=0.0, orthogonality_reduction=reduction)
        _, _, terms = training_losses(model, model, x, 0, cfg, None)
        assert torch.allclose(terms["orthogonality"], expected)


def test_each_loss_weight_multiplies_the_stated_reduction():
    """Each term's scale under resizing: means stay put when the batch, the image or K grows; L_orth's sum grows."""
    model = tiny_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    doubled = type(out)(*(torch.cat([t, t]) if isinstance(t, torch.Tensor) else
                          {k: torch.cat([v, v]) for k, v in t.items()} for t in out))
    cfg = LossConfig(beta=0.0)
    one = viscoin_losses(out, x, cfg, None, None)
    two = viscoin_losses(doubled, torch.cat([x, x]), cfg, None, None)
    for name in ("output_fidelity", "rec_l2", "rec_l1", "rec_classification", "sparsity", "latent"):
        assert torch.allclose(one[name], two[name], atol=1e-6), name       # batch means, not sums
    # Φ's L1 is a mean over its K·3·3 entries: a constant map of value a gives δ·a whatever K
    phi = torch.full_like(out.phi, 0.5)
    assert torch.allclose(viscoin_losses(out._replace(phi=phi), x, cfg, None, None)["sparsity"], torch.tensor(0.2 * 0.5))
    # Ω's offsets: a mean over the num_ws·w_dim entries
    off = torch.full_like(out.offsets, 2.0)
    assert torch.allclose(viscoin_losses(out._replace(offsets=off), x, cfg, None, None)["latent"], torch.tensor(4.0))
    big = tiny_model(k=8)
    assert big.orthogonality_loss("mean") < big.orthogonality_loss("sum") / 60          # sum over 64 entries


@pytest.mark.parametrize("noise", ["const", "random"])
def test_generator_noise_in_training_passes_is_an_option_and_decoding_stays_constant(noise):
    torch.manual_seed(0)
    model = VisCoIN(VisCoINConfig(num_concepts=4, adapter_channels=8, train_noise=noise), tiny_f(), tiny_G(32), 32)
    with torch.no_grad():
        strengths = [p for n, p in model.G.named_parameters() if n.endswith("noise_strength")]
        assert strengths
        for p in strengths:
            p.fill_(0.5)                                        # a fresh G's noise strengths are 0
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = model(x).x_rec, model(x).x_rec
    assert torch.equal(a, b) == (noise == "const")
    enc = model.encode(x)
    assert torch.equal(model.decode(enc.phi, enc.support), model.decode(enc.phi, enc.support))
    assert torch.allclose(model.decode(enc.phi, enc.support), a, atol=1e-6) == (noise == "const")
    assert VisCoINConfig().train_noise == "const"
