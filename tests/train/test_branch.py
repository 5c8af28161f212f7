"""Branches (issue #30): a branch continues its parent from a checkpoint on exactly the parent's
batches; with no intervention it reproduces the parent's checkpoints bit for bit; interventions
are parsed with one-line errors and do what they say."""

import pytest
import torch

import icl_lab
from icl_lab.errors import ConfigError
from icl_lab.train.branch import branch
from icl_lab.train.checkpoint import load_weights
from icl_lab.train.interventions import parse

CFG = icl_lab.get_preset("synthetic-2l").replace(train={"steps": 120, "warmup_steps": 10, "n_checkpoints": 8, "log_every": 10})


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return icl_lab.train(CFG, out=tmp_path_factory.mktemp("branch") / "parent")


@pytest.mark.parametrize("fork", [0, 32])
def test_a_branch_without_an_intervention_reproduces_its_parent_bit_for_bit(parent, tmp_path, fork):
    fork = fork if fork in parent.checkpoints else min(s for s in parent.checkpoints if s > 0)
    child = icl_lab.load_run(branch(parent.path, fork, tmp_path / "child"))
    later = [s for s in parent.checkpoints if s >= fork]
    assert child.checkpoints == later
    for step in later:
        a, b = load_weights(parent.layout.checkpoint(step)), load_weights(child.layout.checkpoint(step))
        assert all(torch.equal(a[k], b[k]) for k in a), step
    assert child.meta["parent"] == {"run": str(parent.path.resolve()), "step": fork, "intervention": None, "until": None}


def test_freeze_keeps_the_head_and_ablate_changes_the_training(parent, tmp_path):
    fork = parent.checkpoints[2]
    frozen = icl_lab.load_run(branch(parent.path, fork, tmp_path / "frozen", "freeze:L1H0"))
    before, after = load_weights(parent.layout.checkpoint(fork)), load_weights(frozen.layout.checkpoint(frozen.checkpoints[-1]))
    for name in ("blocks.1.attn.W_Q", "blocks.1.attn.W_K", "blocks.1.attn.W_V", "blocks.1.attn.W_O"):
        assert torch.equal(before[name][0], after[name][0]), name  # momentum and weight decay moved nothing
    assert not torch.equal(before["blocks.0.attn.W_Q"], after["blocks.0.attn.W_Q"])  # the rest trained
    ablated = icl_lab.load_run(branch(parent.path, fork, tmp_path / "ablated", "ablate:L0H0", until=96))
    assert ablated.meta["parent"]["intervention"] == "ablate:L0H0" and ablated.meta["parent"]["until"] == 96
    last = load_weights(ablated.layout.checkpoint(ablated.checkpoints[-1]))
    assert not torch.equal(last["blocks.1.attn.W_K"], load_weights(parent.layout.checkpoint(parent.checkpoints[-1]))["blocks.1.attn.W_K"])


def test_smeared_keys_switched_on_at_a_fork_keep_the_weights_and_add_the_logits(parent, tmp_path):
    fork = parent.checkpoints[3]
    child = icl_lab.load_run(branch(parent.path, fork, tmp_path / "smeared", "smear-keys:on"))
    assert child.config.model.smeared_key and not parent.config.model.smeared_key
    first = load_weights(child.layout.checkpoint(fork))
    assert torch.equal(first["blocks.0.attn.W_Q"], load_weights(parent.layout.checkpoint(fork))["blocks.0.attn.W_Q"])
    assert torch.equal(first["blocks.0.attn.smear_alpha"], torch.zeros_like(first["blocks.0.attn.smear_alpha"]))


@pytest.mark.parametrize("spec, message", [
    ("prune:L0H0", "unknown intervention 'prune:L0H0'; write one of ablate:"),
    ("ablate:layer0", "name the head as L<layer>H<head>"),
    ("clamp-pattern:L0H0=diagonal", "clamp the pattern to one of previous-token, uniform, bos"),
    ("mask-loss:bigrams", "the one mask is mask-loss:repeats"),
    ("smear-keys:off", "can only be switched on"),
])
def test_bad_interventions_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        parse(spec)


def test_a_branch_needs_a_checkpoint_a_head_and_steps_past_its_fork(parent, tmp_path):
    with pytest.raises(ConfigError, match="has no checkpoint at step 7; nearest"):
        branch(parent.path, 7, tmp_path / "x")
    with pytest.raises(ConfigError, match="the model has no head L3H0"):
        branch(parent.path, 0, tmp_path / "y", "ablate:L3H0")
    with pytest.raises(ConfigError, match="keeps its parent's model and data"):
        branch(parent.path, 0, tmp_path / "z", changes={"model": {"d_model": 32}})


def test_compare_overlays_a_family_and_tabulates_the_shifts(parent, tmp_path):
    """`icl-lab compare`: an offline page with the family's curves, the fork and release marked,
    and a shift table read from the stored analyses (it broke silently once when a page helper
    was renamed: nothing ran it)."""
    from typer.testing import CliRunner

    from icl_lab.cli import app
    from icl_lab.report.compare import shift_rows, write_compare
    from icl_lab.run import open_run_files

    child = icl_lab.load_run(branch(parent.path, 0, tmp_path / "abl", "ablate:L0H0", until=64))
    with pytest.raises(ConfigError, match="not analysed yet"):
        write_compare([parent.path, child.path], tmp_path / "c.html")
    icl_lab.analyze([parent, child], n_examples=16)
    page = write_compare([parent.path, child.path], tmp_path / "c.html").read_text()
    assert "fig-compare" in page and "ablate:L0H0 from step 0 until 64" in page and "<script src=" not in page
    rows = shift_rows([open_run_files(parent.path), open_run_files(child.path)])
    assert [r["run"] for r in rows] == ["parent", "abl"] and rows[1]["fork"]["until"] == 64
    assert rows[0]["shift"] == 0 or rows[0]["shift"] != rows[0]["shift"]  # the first run against itself, or no window
    with pytest.raises(ConfigError, match="at least two runs"):
        write_compare([parent.path])
    out = CliRunner().invoke(app, ["compare", str(parent.path), str(child.path), "--out", str(tmp_path / "d.html")])
    assert out.exit_code == 0 and (tmp_path / "d.html").is_file(), out.output


def test_a_branch_is_analysed_with_its_intervention_held_where_it_was(parent, tmp_path):
    """A head clamped to the previous token during training is clamped when the branch's
    checkpoints are measured (before, the analysis switched the clamp off and scored a head whose
    queries and keys never trained); after the release it is measured as it is."""
    clamped = icl_lab.load_run(branch(parent.path, 0, tmp_path / "clamp", "clamp-pattern:L0H0=previous-token", until=96))
    icl_lab.analyze([clamped], n_examples=16)
    table = clamped.metrics()
    prev = table[(table.metric == "previous_token") & (table.layer == 0) & (table["head"] == 0)].set_index("step").value
    held = [s for s in clamped.checkpoints if s < 96]
    assert (prev[held] > 0.95).all(), prev
    assert (prev[[s for s in clamped.checkpoints if s >= 96]] < 0.9).all(), prev  # released: its own (untrained) pattern
    assert clamped.summary()["provenance"]["branch"]["intervention"] == "clamp-pattern:L0H0=previous-token"
