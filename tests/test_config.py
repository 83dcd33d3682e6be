from dataclasses import dataclass, field

import pytest

from lsdc import config
from lsdc.errors import ConfigError


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
