"""Typed YAML config: good files load, bad keys, types and values name file and key."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gen_theta_model.config import ConfigError, from_mapping, load_config, to_mapping
from gen_theta_model.topics import TopicConfig, load_topics


@dataclass(frozen=True)
class Inner:
    rate_hz: float = 10.0

    def __post_init__(self) -> None:
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {self.rate_hz}")


@dataclass(frozen=True)
class Outer:
    name: str
    sizes: tuple[int, ...] = ()
    inner: Inner = field(default_factory=Inner)
    mode: str | None = None


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_loads_nested_and_converts(tmp_path: Path) -> None:
    cfg = load_config(Outer, write(tmp_path, "name: a\nsizes: [1, 2]\ninner: {rate_hz: 5}\n"))
    assert cfg == Outer(name="a", sizes=(1, 2), inner=Inner(rate_hz=5.0))
    assert from_mapping(Outer, to_mapping(cfg)) == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nsize: [1]\n", "unknown key 'size'"),
        ("name: a\ninner: {rate: 1}\n", "unknown key 'inner.rate'"),
        ("name: a\ninner: {rate_hz: fast}\n", "key 'inner.rate_hz': expected float, got 'fast'"),
        ("name: a\nsizes: [1, x]\n", "key 'sizes[1]': expected int"),
        ("name: a\ninner: {rate_hz: -1}\n", "rate_hz must be positive, got -1.0"),
        ("sizes: [1]\n", "missing required key 'name'"),
        ("name: [a\n", "invalid YAML"),
        ("- a\n", "expected a mapping at the top level"),
    ],
)
def test_bad_input_names_file_key_and_value(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_overrides_win(tmp_path: Path) -> None:
    cfg = load_config(Outer, write(tmp_path, "name: a\n"), overrides={"inner.rate_hz": 7.0})
    assert cfg.inner.rate_hz == 7.0


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_shipped_topics_load_and_resolve() -> None:
    topics = load_topics()
    assert topics.resolve("arm6", topics.joint_states) == "/arm6/joint_states"
    assert topics.camera_topic("arm6", "wrist") == "/arm6/camera/wrist/image_raw"
    assert topics.resolve("arm6", topics.diagnostics) == "/diagnostics"
    with pytest.raises(ValueError, match="must contain"):
        TopicConfig(camera="camera/image_raw")
