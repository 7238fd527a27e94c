"""The universal generator (any network from the first frame): simulated networks, the
choice of generator per network, training it, and its accuracy on a network it never saw."""

import json

import numpy as np
import pytest
import torch

from scalefield_ros.core import mde_variants
from scalefield_ros.core.mde_variants import Variant


def _depth(b=2, h=48, w=96):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    d = 2.0 + 20.0 * yy ** 2 + 3.0 * (xx > 0.5).float()  # a ramp and an edge
    return torch.stack([d * (1 + 0.5 * i) for i in range(b)])


def test_identity_variant_is_the_network_itself_and_every_variant_stays_positive():
    d = _depth(3)
    assert torch.allclose(mde_variants.apply(d, [Variant()] * 3), d, rtol=1e-5)
    rng = np.random.default_rng(0)
    out = mde_variants.apply(d, [mde_variants.draw(rng) for _ in range(3)])
    assert out.shape == d.shape and bool(torch.isfinite(out).all()) and bool((out > 0).all())
    with pytest.raises(ValueError, match="one variant per image: 2 variants for 3"):
        mde_variants.apply(d, [Variant(), Variant()])


def test_each_distortion_is_the_error_it_models():
    d = _depth(1)
    logd = torch.log(d[0])
    # a disparity shift is a depth-dependent scale: log(D'/D) falls with depth for a positive shift
    ratio = torch.log(mde_variants.apply(d, [Variant(shift=0.4)])[0] / d[0])
    assert np.corrcoef(logd.flatten().numpy(), ratio.flatten().numpy())[0, 1] < -0.9
    # gamma scales the spread of log depth about its median
    g = torch.log(mde_variants.apply(d, [Variant(gamma=0.5)])[0])
    assert float(g.std() / logd.std()) == pytest.approx(0.5, rel=1e-3)
    # a tilt along u is a log-scale slope of the given size across the image (-1 .. 1)
    t = torch.log(mde_variants.apply(d, [Variant(tilt=(0.2, 0.0))])[0] / d[0])
    assert float(t[:, -1].mean() - t[:, 0].mean()) == pytest.approx(0.4, abs=1e-3)
    # a coarse network blurs the edge: less gradient energy
    c = torch.log(mde_variants.apply(d, [Variant(coarse=8)])[0])
    assert float(c.diff(dim=1).abs().max()) < 0.5 * float(logd.diff(dim=1).abs().max())
    # low-frequency noise is seeded: the same variant is the same network
    a = mde_variants.apply(d, [Variant(noise=0.1, seed=3)])
    assert torch.equal(a, mde_variants.apply(d, [Variant(noise=0.1, seed=3)]))
    assert not torch.equal(a, mde_variants.apply(d, [Variant(noise=0.1, seed=4)]))


def test_perturbed_backend_is_another_network_with_its_own_identity():
    from scalefield_ros.mde.backends import load_backend

    base = load_backend("embedded", "cpu")
    pert = load_backend("perturbed:0.2:7:224", "cpu")
    assert pert.name.startswith(base.name) and pert.name != base.name and "perturbed-0.2-7-side224" in pert.name
    img = (np.random.default_rng(0).random((96, 160, 3)) * 255).astype(np.uint8)
    a, b = base.predict(img)[0], pert.predict(img)[0]
    assert a.shape == b.shape and not torch.allclose(a / a.median(), b / b.median(), rtol=0.02)
    with pytest.raises(ValueError, match="perturbed:SIGMA"):
        load_backend("perturbed:lots", "cpu")


def test_without_features_keeps_the_maps_of_an_f0_generator():
    from scalefield_ros.checkpoints import MODELS_DIR
    from scalefield_ros.core.generator import load_generator
    from scalefield_ros.train import without_features

    g = load_generator(MODELS_DIR / "generator_k30_medium_f0")
    n = without_features(g)
    assert n.config.feature_channels == 0 and g.config.feature_channels == 32
    d = _depth(1)
    assert torch.allclose(g(d).E, n(d).E, atol=1e-6)


class _Other:  # a user's network: unknown identity, its own feature channels
    name = "my-network-v3"
    feature_channels = 64


def test_a_network_without_its_own_generator_gets_the_universal_one():
    from scalefield_ros.checkpoints import check_generator_mde, default_checkpoint, shipped_generator_for
    from scalefield_ros.core.generator import load_generator
    from scalefield_ros.mde.backends import load_backend

    own, kind = shipped_generator_for(load_backend("embedded", "cpu"))
    assert kind == "own" and own == default_checkpoint("lidar")
    path, kind = shipped_generator_for(_Other())
    assert kind == "universal"
    cfg = load_generator(path).config
    assert cfg.feature_channels == 0 and cfg.mde_name == "universal"
    check_generator_mde(cfg, _Other())  # valid for any network: no error, no warning
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["train_config"]["universal"] is True


def test_universal_training_records_no_network(tmp_path, monkeypatch):
    from scalefield_ros import train
    from scalefield_ros.checkpoints import check_generator_mde
    from scalefield_ros.core.generator import load_generator

    monkeypatch.setenv("SCALEFIELD_CACHE", str(tmp_path / "cache"))
    train.main(["--out", str(tmp_path / "u"), "--seeds", "100-102", "--frames", "0", "--epochs", "1", "--batch", "2",
                "--width", "8", "--val-fraction", "0.34", "--num-basis", "4", "--data", "synthetic:indoor",
                "--universal", "true", "--threads", "2"])
    gen = load_generator(tmp_path / "u" / "best")
    assert gen.config.feature_channels == 0 and gen.config.mde_name == "universal"
    check_generator_mde(gen.config, _Other())
    # fine-tuning the universal generator for one network makes it that network's generator
    train.main(["--out", str(tmp_path / "f"), "--seeds", "100-102", "--frames", "0", "--epochs", "1", "--batch", "2",
                "--val-fraction", "0.34", "--data", "synthetic:indoor", "--init", "universal", "--threads", "2"])
    tuned = load_generator(tmp_path / "f" / "best")
    assert tuned.config.feature_channels == 0 and tuned.config.mde_name.startswith("embedded-")
