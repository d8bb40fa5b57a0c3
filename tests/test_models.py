"""Model loading: aliases, paths, GGUF, hub ids, devices, and the process-wide cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_core import ConfigError, ModelLoadError, load_model
from shared_core.models import EMBEDDED_MODELS, LocalModel, resolve_model_source


def test_load_is_cached_per_process(smollm2: LocalModel) -> None:
    assert load_model("smollm2") is smollm2


def test_embedded_model_metadata(smollm2: LocalModel) -> None:
    assert smollm2.has_chat_template
    assert smollm2.tokenizer.convert_ids_to_tokens(sorted(smollm2.eos_token_ids)) == ["<|im_end|>"]
    assert smollm2.context_window == 8192
    assert (Path(smollm2.source) / "model.safetensors").exists()


def test_gguf_path_shares_the_alias_conversion(smollm2: LocalModel) -> None:
    gguf = EMBEDDED_MODELS["smollm2"].gguf_path()
    assert resolve_model_source(str(gguf)) == smollm2.source


def test_folder_path_loads(tiny_model_dir: str) -> None:
    model = load_model(tiny_model_dir)
    assert model.model.config.num_hidden_layers == 2


def test_unknown_alias_lists_valid_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"'nosuchmodel' is not an embedded alias \(gemma3-270m, smollm2\)"):
        load_model("nosuchmodel")


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "here"
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(missing))


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_unreachable_hub_id_fails_fast_with_offline_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub id but the model hub .* cannot be reached"):
        load_model("some-org/some-model-that-is-not-cached")


def test_pickle_weights_are_refused_by_default(tmp_path: Path, tiny_model: LocalModel) -> None:
    import torch

    tiny_model.model.config.save_pretrained(tmp_path)
    tiny_model.tokenizer.save_pretrained(tmp_path)
    torch.save(tiny_model.model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="deal loads safetensors by default"):
        load_model(str(tmp_path))


def test_cuda_without_cuda_is_a_config_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="device: 'cuda' was asked for but CUDA is not available"):
        load_model("smollm2", device="cuda")


def test_bad_dtype_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="dtype: 'int3' is not supported; use 'auto'"):
        load_model("smollm2", dtype="int3")


def test_chat_fallback_for_models_without_template(tiny_model: LocalModel) -> None:
    template = tiny_model.tokenizer.chat_template
    tiny_model.tokenizer.chat_template = None
    try:
        text = tiny_model.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        assert text == "System: Be brief.\n\nUser: Hi\n\nAssistant:"
        assert tiny_model.render("Hi") == tiny_model.encode("Hi", add_special_tokens=True)
    finally:
        tiny_model.tokenizer.chat_template = template
