"""One strict loader behind every way settings come in: YAML files, ``train-nerf --set``, the
trainer node's ``config_overrides_yaml``, descriptor settings and checkpoints. Each refusal is one
line naming the source and the key path."""

import io

import pytest
import torch
import yaml

from nerf_descriptor_ros.cli import main
from nerf_descriptor_ros.commands.train_nerf import load_nerf_config
from nerf_descriptor_ros.config import ConfigError, load_dataclass, merged, parse_yaml_mapping
from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
from nerf_descriptor_ros.nerf.config import NerfConfig, config_from_dict, load_config


def refused(call, *args) -> str:
    """The message of the ConfigError that ``call(*args)`` raises; it is always one line."""
    with pytest.raises(ConfigError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("{bogus: 1}", "--set: bogus: unknown key (known: model, iterations, "),
        ("{fast: {plane_featurez: 3}}", "--set: fast.plane_featurez: unknown key (known: plane_resolutions, "),
        ("{iterations: 1.5}", "--set: iterations: expected an integer, got 1.5"),
        ("{iterations: true}", "--set: iterations: expected an integer, got True"),
        ("{iterations: '100'}", "--set: iterations: expected an integer, got '100'"),
        ("{iterations: null}", "--set: iterations: expected an integer, got None"),
        ("{iterations: 0}", "--set: iterations: must be 1..4294967295, got 0"),
        ("{iterations: 4294967296}", "--set: iterations: must be 1..4294967295, got 4294967296"),
        ("{time_budget_s: lots}", "--set: time_budget_s: expected a number, got 'lots'"),
        ("{time_budget_s: false}", "--set: time_budget_s: expected a number, got False"),
        ("{classic: {use_viewdirs: 1}}", "--set: classic.use_viewdirs: expected true or false, got 1"),
        ("{model: 3}", "--set: model: expected a string, got 3"),
        ("{scene_box: 5}", "--set: scene_box: expected a list, got 5"),
        ("{fast: {plane_resolutions: [a]}}", "--set: fast.plane_resolutions[0]: expected an integer, got 'a'"),
        ("{fast: {plane_resolutions: [64, 1.5]}}", "--set: fast.plane_resolutions[1]: expected an integer, got 1.5"),
        ("{fast: 5}", "--set: fast: expected a mapping, got 5"),
        ("{fast: {sh_degree: 7}}", "--set: fast.sh_degree: must be 0..4, got 7"),
        ("[1, 2]", "--set must be a YAML mapping of settings, got [1, 2]"),
        ("{iterations: [", "--set is not valid YAML: "),
    ],
)
def test_set_overrides_of_train_nerf_are_checked_strictly(overrides, message):
    assert refused(load_nerf_config, None, overrides).startswith(message)


def test_set_overrides_accept_ints_for_floats_and_lists_and_none_where_allowed():
    config = load_nerf_config(None, "{time_budget_s: 5, scene_box: [-1, -1, -1, 1, 1, 1.5], fast: {sh_degree: 0}}")
    assert config.time_budget_s == 5.0 and isinstance(config.time_budget_s, float)
    assert config.scene_box == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.5] and config.fast.sh_degree == 0
    assert config.fast.plane_resolutions == NerfConfig().fast.plane_resolutions  # deep merge keeps the rest
    assert load_nerf_config(None, "{scene_box: null}").scene_box is None
    assert load_nerf_config(None, "") == NerfConfig()


def test_train_nerf_command_prints_a_config_error_as_one_line(tmp_path, capsys):
    assert main(["train-nerf", str(tmp_path), "--set", "{iterations: 1.5}"]) == 2
    assert capsys.readouterr().err == "error: --set: iterations: expected an integer, got 1.5\n"


def test_nerf_config_files_are_checked_and_named(tmp_path):
    path = tmp_path / "nerf.yaml"
    path.write_text("model: classic\nclassic:\n  netwidth: 12.5\n")
    assert refused(load_config, path) == f"{path}: classic.netwidth: expected an integer, got 12.5"
    path.write_text("fast:\n  hidden_width: 0\n")
    assert refused(load_config, path) == f"{path}: fast.hidden_width: must be >= 1, got 0"
    path.write_text("model: classic\nclassic: {netdepth: 4, skip_layer: 6}\n")
    assert "classic.skip_layer: must be inside the network depth" in refused(load_config, path)
    path.write_text("iterations: 10\nfast: {plane_resolutions: [16, 32]}\n")
    config = load_config(path)
    assert (config.iterations, config.fast.plane_resolutions, config.fast.sh_degree) == (10, [16, 32], 2)
    assert refused(load_config, tmp_path / "missing.yaml") == f"config file {tmp_path / 'missing.yaml'} does not exist"


def test_descriptor_settings_files_and_overrides_are_checked(tmp_path):
    path = tmp_path / "descriptors.yaml"
    for values, message in [
        ({"training": 5}, "training: expected a mapping, got 5"),
        ({"training": {"iterations": 1.5}}, "training.iterations: expected an integer, got 1.5"),
        ({"training": {"iterations": 0}}, "training.iterations: must be 1..4294967295, got 0"),
        ({"training": {"descriptor_dim": True}}, "training.descriptor_dim: expected an integer, got True"),
        ({"training": {"augmentation": {"scale_range": ["a", 1]}}}, "training.augmentation.scale_range[0]: expected"),
        ({"correspondences": {"width": 0}}, "correspondences.width: must be >= 1, got 0"),
        ({"correspondences": {"matching": {"tolerance": 1}}}, "correspondences.matching.tolerance: unknown key"),
        ({"nerf": {"use_dataset_masks": 1}}, "nerf.use_dataset_masks: expected true or false, got 1"),
        ({"nerf": {"workspace_box": [[0, 0, 0], [1, 1]]}}, "nerf.workspace_box: must be [[xmin, ymin, zmin], "),
        ({"evaluation": {"per_pair": "many"}}, "evaluation.per_pair: expected an integer, got 'many'"),
        ({"evaluation": {"seed": None}}, "evaluation.seed: expected an integer, got None"),
    ]:
        path.write_text(yaml.safe_dump(values))
        assert refused(DescriptorSettings.load, path).startswith(f"{path}: {message}")
        assert refused(DescriptorSettings.load, None, values).startswith(f"overrides: {message}")

    path.write_text(yaml.safe_dump({"training": {"learning_rate": 1, "augmentation": {"scale_range": [1, 2]}}}))
    settings = DescriptorSettings.load(path, {"training": {"augmentation": {"brightness": 0}}})
    assert settings.training.learning_rate == 1.0 and isinstance(settings.training.learning_rate, float)
    # Overrides merge into the file's sections instead of replacing them.
    assert settings.training.augmentation.scale_range == (1.0, 2.0) and settings.training.augmentation.brightness == 0


def test_trainer_overrides_name_the_stage_in_the_key_path():
    from nerf_descriptor_ros.nodes.trainer import (
        STAGES,
        JobContext,
        TrainingRequestError,
        _descriptor_settings,
        _nerf_config,
        parse_overrides,
    )

    def check(text: str) -> None:
        overrides = parse_overrides(text, STAGES)
        ctx = JobContext(dataset=None, overrides={}, device="cpu", nerf_config_path="")
        for stage, configure in (("nerf", _nerf_config), ("descriptors", _descriptor_settings)):
            if stage in overrides:
                ctx.overrides = overrides[stage]
                configure(ctx)

    source = "config_overrides_yaml: "
    for text, message in [
        ("{nerf: {scene_box: 5}}", "nerf.scene_box: expected a list, got 5"),
        ("{nerf: {fast: {plane_resolutions: [a]}}}", "nerf.fast.plane_resolutions[0]: expected an integer, got 'a'"),
        ("{nerf: {iterations: 1.5}}", "nerf.iterations: expected an integer, got 1.5"),
        ("{nerf: {bogus: 1}}", "nerf.bogus: unknown key"),
        ("{descriptors: {training: 5}}", "descriptors.training: expected a mapping, got 5"),
        ("{descriptors: {correspondences: {width: 0}}}", "descriptors.correspondences.width: must be >= 1, got 0"),
        ("{descriptors: {training: {iterations: 1.5}}}", "descriptors.training.iterations: expected an integer"),
        ("{descriptors: {training: {mode: colmap}}}", "descriptors.training.mode: 'colmap' unknown"),
    ]:
        assert refused(check, text).startswith(source + message)
    assert refused(check, "{nerf: {iterations: [}").startswith("config_overrides_yaml is not valid YAML: ")
    with pytest.raises(TrainingRequestError, match="must map stage names"):
        parse_overrides("{nerf: [1]}", STAGES)
    check("{nerf: {iterations: 20, time_budget_s: 3}, descriptors: {training: {iterations: 5}}}")


def test_checkpoint_configs_round_trip_through_torch_save():
    config = config_from_dict({"model": "classic", "scene_box": [0, 0, 0, 1, 1, 1], "fast": {"sh_degree": 1}})
    buffer = io.BytesIO()
    torch.save({"config": config.to_dict()}, buffer)
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)["config"]
    assert load_dataclass(NerfConfig, stored, "checkpoint") == config
    stored["fast"]["sh_degree"] = "1"
    assert refused(load_dataclass, NerfConfig, stored, "checkpoint") == (
        "checkpoint: fast.sh_degree: expected an integer, got '1'"
    )


def test_merged_leaves_the_base_alone_and_validate_catches_later_changes():
    base = NerfConfig()
    changed = merged(base, {"fast": {"plane_resolutions": [8]}}, "test")
    assert changed.fast.plane_resolutions == [8] and base.fast.plane_resolutions == [32, 64, 128, 256]
    base.iterations = 2.5
    assert refused(base.validate) == "NeRF config: iterations: expected an integer, got 2.5"
    assert parse_yaml_mapping("# nothing\n", "file") == {}
