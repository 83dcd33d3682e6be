from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lsdc import config
from lsdc.errors import ConfigError
from lsdc.experiment import ExperimentConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Inner:
    lr: float = 1e-3
    sizes: tuple[int, int] = (1, 2)


@dataclass
class Outer:
    name: str = "a"
    epochs: int = 3
    flag: bool = False
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: b\ninner:\n  lr: 0.5\n")
    cfg = config.load(Outer, p, ["inner.sizes=[3, 4]", "epochs=7", "flag=true", "path=x.pt"])
    assert cfg == Outer(name="b", epochs=7, flag=True, path="x.pt", inner=Inner(lr=0.5, sizes=(3, 4)))


def test_unknown_key_named(tmp_path):
    with pytest.raises(ConfigError, match="inner.lrr"):
        config.load(Outer, None, ["inner.lrr=1"])
    p = tmp_path / "c.yaml"
    p.write_text("epoch: 2\n")
    with pytest.raises(ConfigError, match="'epoch'"):
        config.load(Outer, p)


def test_bad_values_refused():
    with pytest.raises(ConfigError, match="'epochs'"):
        config.load(Outer, None, ["epochs=2.5"])
    with pytest.raises(ConfigError, match="'flag'"):
        config.load(Outer, None, ["flag=maybe"])
    with pytest.raises(ConfigError, match="sizes"):
        config.load(Outer, None, ["inner.sizes=[1, 2, 3]"])
    with pytest.raises(ConfigError, match="key=value"):
        config.load(Outer, None, ["epochs"])


def test_save_roundtrip(tmp_path):
    cfg = config.load(Outer, None, ["inner.lr=0.25"])
    config.save(cfg, tmp_path / "out" / "config.yaml")
    assert config.load(Outer, tmp_path / "out" / "config.yaml") == cfg


NAMES = ("model.name", "name")   # what names a run may be stated even at its default, for the reader


def _restated(data: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Keys of ``data`` whose value equals the default (sections compared key by key)."""
    out = []
    for key, value in data.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and isinstance(default, dict) and key != "size_mm":
            out += _restated(value, default, f"{prefix}{key}.")
        elif value == default:
            out.append(f"{prefix}{key}")
    return out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_a_config_file_states_only_what_differs_from_the_defaults(path):
    """One home per fact: a default lives in its dataclass, so a config that restated it would keep the old
    value when the default moves (as configs/attention.yaml once kept the paper's constant rate)."""
    from lsdc.localize import LocalizerExperiment
    from lsdc.pipeline import PipelineConfig
    from lsdc.synthetic import SyntheticConfig

    cls = (LocalizerExperiment if path.name.startswith("localizer") else
           PipelineConfig if path.name.startswith(("pipeline", "bench_quality")) else
           SyntheticConfig if path.name == "synthetic.yaml" else ExperimentConfig)
    data = yaml.safe_load(path.read_text())
    config.load(cls, path)   # loads: no unknown key
    if path.name == "synthetic.yaml":
        pytest.skip("the generator's file shows its size and seed, the knobs a user turns (the rest are fields)")
    restated = [k for k in _restated(data, config.to_dict(cls())) if k not in NAMES]
    assert not restated, f"{path.name} restates the defaults of {restated}"
