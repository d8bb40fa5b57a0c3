"""ARM training mechanics on a tiny random model: the loss goes down, the folder reloads and guides decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared_core import ConfigError, generate
from shared_core.arm_training import (
    example_path,
    freeze_for_arm_training,
    load_preferences,
    train_arm,
)
from shared_core.models import LocalModel, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PAIRS = [
    {"prompt": "Say something.", "chosen": "yes yes", "rejected": "no no"},
    {"prompt": "Answer me.", "chosen": "yes", "rejected": "no"},
    {"prompt": "What now?", "chosen": "yes indeed", "rejected": "no indeed"},
    {"prompt": [{"role": "user", "content": "Well?"}], "chosen": "yes", "rejected": "no"},
]


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir: str, preference_file: Path):
    out = tmp_path_factory.mktemp("trained-arm")
    report = train_arm(tiny_model_dir, preference_file, out, epochs=12, batch_size=2, learning_rate=3e-3,
                       beta=1.0, train_layers=1, reference=False)
    return out, report


def test_training_lowers_the_loss_and_ranks_pairs_right(trained) -> None:
    _, report = trained
    assert report.steps == 24 and report.pairs == 4
    assert report.epoch_losses[-1] < 0.5 * report.epoch_losses[0]
    assert report.epoch_accuracies[-1] == 1.0


def test_the_folder_reloads_and_prefers_the_chosen_responses(trained, tiny_model_dir: str) -> None:
    out, report = trained
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "arm_training.json").read_text())["steps"] == report.steps
    from shared_core.rewards.arm import ArmReward

    trained_arm = ArmReward(str(out))
    base_arm = ArmReward(tiny_model_dir)
    trained_margin = trained_arm.score(["yes"], prompt="Reply.")[0] - trained_arm.score(["no"], prompt="Reply.")[0]
    base_margin = base_arm.score(["yes"], prompt="Reply.")[0] - base_arm.score(["no"], prompt="Reply.")[0]
    assert trained_margin > base_margin + 1.0  # held-out prompt


def test_the_trained_arm_guides_genarm(trained, tiny_model: LocalModel) -> None:
    out, _ = trained
    yes = tiny_model.encode("yes")[0]
    base = generate(tiny_model, "Reply.", max_new_tokens=8)
    guided = generate(tiny_model, "Reply.", strategy="genarm", max_new_tokens=8,
                      reward={"type": "arm", "model": str(out), "weight": 3.0})
    assert guided.token_ids.count(yes) > base.token_ids.count(yes)


def test_only_the_top_layers_train(tiny_model_dir: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    count = freeze_for_arm_training(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.layers.1.", "model.norm.")) for name in trainable)
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_reference_form_starts_at_log_two(tmp_path: Path, tiny_model_dir: str, preference_file: Path) -> None:
    report = train_arm(tiny_model_dir, preference_file, tmp_path / "ref-arm", epochs=1, batch_size=4,
                       learning_rate=1e-3, train_layers=1, reference=True)
    assert report.losses[0] == pytest.approx(0.6931, abs=1e-3)


def test_the_example_preference_files_load() -> None:
    train = load_preferences(example_path())
    held = load_preferences(example_path("arm_heldout.jsonl"))
    assert len(train) >= 60 and len(held) >= 15
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert all(len(p.chosen) < len(p.rejected) for p in train)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"prompt": "p", "chosen": "a"}', "preferences line 1.rejected"),
        ('{"prompt": "", "chosen": "a", "rejected": "b"}', "preferences line 1.prompt"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}', "preferences line 1"),
        ("not json", "preferences line 1"),
    ],
)
def test_bad_preference_lines_name_the_line(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_preferences(path)
    assert err.value.field == field


def test_bad_training_arguments(tmp_path: Path, tiny_model_dir: str, preference_file: Path) -> None:
    with pytest.raises(ConfigError) as err:
        train_arm(tiny_model_dir, preference_file, tmp_path, beta=float("nan"))
    assert err.value.field == "beta"
    with pytest.raises(ConfigError) as err:
        train_arm(tiny_model_dir, preference_file, tmp_path, train_layers=99)
    assert err.value.field == "train_layers"
    with pytest.raises(ConfigError) as err:
        train_arm(tiny_model_dir, tmp_path / "missing.jsonl", tmp_path)
    assert err.value.field == "preferences"


def test_cli_train_arm(tmp_path: Path, tiny_model_dir: str, preference_file: Path) -> None:
    from shared_core.cli import app

    out = tmp_path / "cli-arm"
    result = CliRunner().invoke(app, ["train-arm", "--base", tiny_model_dir, "--data", str(preference_file),
                                      "--out", str(out), "--epochs", "1", "--layers", "1"])
    assert result.exit_code == 0, result.output
    assert "ARM written to" in result.output and '"type": "arm"' in result.output
    assert load_model(str(out)).vocab_size == load_model(tiny_model_dir).vocab_size
    bad = CliRunner().invoke(app, ["train-arm", "--base", tiny_model_dir, "--data", str(tmp_path / "nope.jsonl"),
                                   "--out", str(out)])
    assert bad.exit_code == 2 and "preferences" in bad.output
