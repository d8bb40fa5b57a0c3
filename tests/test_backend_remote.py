"""Remote backends: ``connect_model`` against a real HTTP server on 127.0.0.1 (tests/completions_server.py).

The server answers ``/v1/completions`` the way vLLM does, from the tiny random model, so a remote run
can be compared token for token with the same strategy run locally. Faults (HTTP errors, delays,
missing features) are injected per test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from completions_server import CompletionsServer, free_port
from typer.testing import CliRunner

from shared_core import (
    BackendConnectionError,
    BackendFeatureError,
    BackendRequestError,
    BackendServerError,
    BackendTimeoutError,
    ConfigError,
    RemoteModel,
    connect_model,
    generate,
    get_strategy,
    list_strategies,
    report,
    stream,
)
from shared_core.backends import CAPABILITIES, LOCAL_CAPABILITIES, REMOTE_CAPABILITIES
from shared_core.backends.remote import ServerTokenizer
from shared_core.models import LocalModel, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Hello there", "Give me a tip for staying safe online.", "Name three colours."]
KEYWORDS = {"type": "keywords", "words": ["dog"]}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2: LocalModel, save_tiny_llama) -> str:
    """The tiny random Llama with a 2048-token window (URIAL's preamble needs more than 512)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-remote"), smollm2.tokenizer, max_position_embeddings=2048)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir: str) -> LocalModel:
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def server(tiny_model: LocalModel) -> Iterator[CompletionsServer]:
    with CompletionsServer(tiny_model, max_model_len=2048) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        srv.faults.__init__()  # type: ignore[misc]
        srv.requests.clear()


@pytest.fixture(scope="module")
def remote(server: CompletionsServer, tiny_model_dir: str) -> Iterator[RemoteModel]:
    handle = connect_model(server.base_url, tokenizer=tiny_model_dir, backoff=0.01)
    yield handle
    handle.close()


# --------------------------------------------------------------------------- connecting


def test_connect_finds_the_only_served_model_and_its_limits(remote: RemoteModel, server: CompletionsServer) -> None:
    assert remote.name == "tiny"
    assert remote.context_window == server.max_model_len
    assert remote.capabilities == REMOTE_CAPABILITIES
    assert remote.eos_token_ids and remote.has_chat_template


def test_connect_rejects_a_model_the_server_does_not_serve(server: CompletionsServer, tiny_model_dir: str) -> None:
    with pytest.raises(ConfigError) as err:
        connect_model(server.base_url, model="nosuch", tokenizer=tiny_model_dir)
    assert err.value.field == "model" and "served: tiny" in str(err.value)


def test_a_server_without_a_model_list_needs_the_model_named(server: CompletionsServer, tiny_model_dir: str) -> None:
    server.faults.no_models = True
    with pytest.raises(BackendRequestError) as err:
        connect_model(server.base_url, tokenizer=tiny_model_dir)
    assert err.value.status == 404
    handle = connect_model(server.base_url, model="tiny", tokenizer=tiny_model_dir)
    try:
        assert handle.name == "tiny" and generate(handle, "hi", max_new_tokens=2).stats.new_tokens == 2
    finally:
        handle.close()


def test_connect_checks_its_arguments_before_any_request() -> None:
    with pytest.raises(ConfigError) as err:
        connect_model("localhost:8000")
    assert err.value.field == "base_url"
    with pytest.raises(ConfigError) as err:
        connect_model("http://127.0.0.1:1", max_retries=-1)
    assert err.value.field == "max_retries"
    with pytest.raises(ConfigError) as err:
        connect_model("http://127.0.0.1:1", capabilities=["logits", "telepathy"])
    assert err.value.field == "capabilities" and "telepathy" in str(err.value)


def test_unreachable_server_is_a_connection_error_after_bounded_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    with pytest.raises(BackendConnectionError) as err:
        connect_model(url, max_retries=2, backoff=0.05)
    assert "after 3 attempts" in str(err.value) and err.value.url.startswith(url)
    assert time.perf_counter() - started < 5


def test_server_tokenizer_when_no_local_one(server: CompletionsServer, tiny_model: LocalModel) -> None:
    handle = connect_model(server.base_url)  # "tiny" is neither a folder nor an embedded model: /tokenize
    try:
        assert isinstance(handle.tokenizer, ServerTokenizer)
        assert handle.render(PROMPTS[0]) == tiny_model.render(PROMPTS[0])
        result = generate(handle, PROMPTS[0], max_new_tokens=6)
        assert result.token_ids == generate(tiny_model, PROMPTS[0], max_new_tokens=6).token_ids
    finally:
        handle.close()


def test_no_tokenizer_anywhere_is_a_feature_error(server: CompletionsServer) -> None:
    server.faults.no_tokenize = True
    with pytest.raises(BackendFeatureError, match="pass tokenizer="):
        connect_model(server.base_url)


# --------------------------------------------------------------------------- plain decoding


def test_remote_greedy_equals_local_greedy_with_one_token_id_request(
        remote: RemoteModel, server: CompletionsServer, tiny_model: LocalModel) -> None:
    for prompt in PROMPTS:
        server.requests.clear()
        got = generate(remote, prompt, max_new_tokens=10)
        want = generate(tiny_model, prompt, max_new_tokens=10)
        assert got.token_ids == want.token_ids and got.text == want.text
        assert len(server.requests) == 1
        body = server.requests[0]
        assert body["prompt"] == tiny_model.render(prompt)  # token ids, rendered with the chat template here
        assert body["temperature"] == 0 and body["stream"] is True
        assert got.stats.extra["requests"] == 1 and got.stats.extra["tokens_proposed"] == 10
        assert got.stats.forward_passes == {}  # no forward pass ran in this process
        assert got.model == "tiny" and got.finish_reason == "length"


def test_stream_yields_deltas_that_add_up_to_the_text(remote: RemoteModel) -> None:
    deltas = stream(remote, PROMPTS[1], max_new_tokens=8)
    text = "".join(deltas)
    assert text == deltas.result.text and deltas.result.stats.new_tokens == 8


def test_stop_string_ends_remote_generation(remote: RemoteModel, tiny_model: LocalModel,
                                            server: CompletionsServer) -> None:
    full = generate(tiny_model, PROMPTS[0], max_new_tokens=10).text
    stop = full.split()[2]
    got = generate(remote, PROMPTS[0], max_new_tokens=10, stop=stop)
    want = generate(tiny_model, PROMPTS[0], max_new_tokens=10, stop=stop)
    assert got.finish_reason == want.finish_reason == "stop"
    assert got.text == want.text and stop not in got.text
    assert server.requests[-1]["stop"] == [stop]


@pytest.mark.parametrize("omit", [False, True])
def test_eos_from_the_server_ends_generation(remote: RemoteModel, server: CompletionsServer, omit: bool) -> None:
    server.faults.eos_after = 4
    server.faults.omit_eos_id = omit  # some servers leave EOS out of the ids and only say finish_reason=stop
    result = generate(remote, PROMPTS[0], max_new_tokens=20)
    assert result.finish_reason == "eos"
    assert len(result.token_ids) == (3 if omit else 4)


def test_sampling_sends_the_seed_and_is_reproducible(remote: RemoteModel, server: CompletionsServer) -> None:
    a = generate(remote, PROMPTS[0], strategy="sample", temperature=1.0, seed=7, max_new_tokens=8)
    b = generate(remote, PROMPTS[0], strategy="sample", temperature=1.0, seed=7, max_new_tokens=8)
    c = generate(remote, PROMPTS[0], strategy="sample", temperature=1.0, seed=8, max_new_tokens=8)
    assert a.token_ids == b.token_ids != c.token_ids
    assert server.requests[0]["seed"] == 7 and server.requests[0]["temperature"] == 1.0


def test_token_ids_re_encoded_when_the_server_returns_only_text(remote: RemoteModel, server: CompletionsServer,
                                                                tiny_model: LocalModel) -> None:
    server.faults.no_token_ids = True
    got = generate(remote, PROMPTS[0], strategy="best_of_n", reward=KEYWORDS, n=1, temperature=0.5, seed=0,
                   max_new_tokens=6)
    assert got.stats.extra["token_ids_from_text"] == 1  # said, not silent
    assert got.text and got.stats.extra["requests"] == 1


# --------------------------------------------------------------------------- guided strategies


def test_best_of_n_is_one_request_with_n_and_keeps_the_best(remote: RemoteModel, server: CompletionsServer) -> None:
    longest = lambda texts: [float(len(t)) for t in texts]  # noqa: E731 - a reward function
    result = generate(remote, PROMPTS[1], strategy="best_of_n", reward=longest, n=4, seed=3, max_new_tokens=8,
                      stop=".")
    assert len(server.requests) == 1 and server.requests[0]["n"] == 4 and server.requests[0]["seed"] == 3
    extra = result.stats.extra
    assert extra["samples"] == 4 and extra["requests"] == 1
    assert extra["sample_scores"][extra["chosen"]] == max(extra["sample_scores"])
    assert result.reward is not None and result.reward.total == max(extra["sample_scores"])


def test_args_matches_local_args_one_top_k_request_per_token(remote: RemoteModel, server: CompletionsServer,
                                                             tiny_model: LocalModel) -> None:
    reward = {"type": "keywords", "words": ["the", "and"]}
    got = generate(remote, PROMPTS[2], strategy="args", reward=reward, top_k=5, weight=2.0, max_new_tokens=8)
    want = generate(tiny_model, PROMPTS[2], strategy="args", reward=reward, top_k=5, weight=2.0, max_new_tokens=8)
    assert got.token_ids == want.token_ids
    assert got.stats.extra["requests"] == 8 == len(server.requests)
    assert all(body["logprobs"] == 5 and body["max_tokens"] == 1 for body in server.requests)


def test_deal_matches_local_deal_with_one_request_per_search(remote: RemoteModel, server: CompletionsServer,
                                                             tiny_model: LocalModel) -> None:
    params = dict(top_k=3, lookahead=4, search_every=2, max_new_tokens=12)
    got = generate(remote, PROMPTS[0], strategy="deal", reward=KEYWORDS, **params)
    want = generate(tiny_model, PROMPTS[0], strategy="deal", reward=KEYWORDS, **params)
    assert got.token_ids == want.token_ids
    extra = got.stats.extra
    assert extra["searches"] == want.stats.extra["searches"]
    assert extra["requests"] == len(server.requests) <= extra["searches"] + 1 + extra["repairs"]
    rollouts = [body for body in server.requests if isinstance(body["prompt"][0], list)]
    assert rollouts and all(len(body["prompt"]) <= 3 for body in rollouts)  # the candidates, in one request


def test_urial_on_a_remote_model_sends_the_urial_prompt(remote: RemoteModel, server: CompletionsServer,
                                                        tiny_model: LocalModel) -> None:
    got = generate(remote, "What is a dog?", urial=True, repetition_penalty=1.0, max_new_tokens=6, chat=False)
    want = generate(tiny_model, "What is a dog?", urial=True, repetition_penalty=1.0, max_new_tokens=6, chat=False)
    assert got.token_ids == want.token_ids
    assert len(server.requests[0]["prompt"]) == got.stats.prompt_tokens == want.stats.prompt_tokens
    assert got.stats.extra["urial_preamble_tokens"] == want.stats.extra["urial_preamble_tokens"]
    server.requests.clear()
    generate(remote, "What is a dog?", urial=True, max_new_tokens=4)
    assert server.requests[0]["repetition_penalty"] == 1.2  # URIAL's default penalty goes to the server


# --------------------------------------------------------------------------- capabilities


def test_the_capability_vocabulary_covers_every_strategy() -> None:
    for name in list_strategies():
        assert get_strategy(name).needs <= set(CAPABILITIES), name
    assert get_strategy("cards").needs == {"samples", "top_logprobs"}
    assert get_strategy("speculative_rejection").needs == {"samples"}
    assert get_strategy("genarm").needs == {"logits"}
    assert LOCAL_CAPABILITIES == set(CAPABILITIES)


@pytest.mark.parametrize("strategy, reward", [("genarm", {"type": "arm", "model": "smollm2"}),
                                              ("transfer_q", None)])
def test_a_strategy_needing_logits_is_refused_before_any_request(
        remote: RemoteModel, server: CompletionsServer, strategy: str, reward: object) -> None:
    params = {"baseline": "smollm2"} if strategy == "transfer_q" else {}
    with pytest.raises(ConfigError) as err:
        generate(remote, "hi", strategy=strategy, reward=reward or KEYWORDS, **params)
    message = str(err.value)
    assert err.value.field == "strategy" and strategy in message and "'logits'" in message
    assert remote.base_url in message
    with pytest.raises(ConfigError):
        stream(remote, "hi", strategy=strategy, reward=reward or KEYWORDS, **params)
    assert server.requests == []


def test_a_server_declared_without_top_logprobs_refuses_args(server: CompletionsServer, tiny_model_dir: str) -> None:
    handle = connect_model(server.base_url, tokenizer=tiny_model_dir, capabilities=["samples"])
    try:
        with pytest.raises(ConfigError, match="'args' needs 'top_logprobs'"):
            generate(handle, "hi", strategy="args", reward=KEYWORDS)
        assert generate(handle, "hi", max_new_tokens=2).token_ids  # what it does offer still runs
    finally:
        handle.close()


def test_a_strategy_without_a_remote_implementation_is_refused(remote: RemoteModel, server: CompletionsServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from shared_core.backends import remote_decoding

    monkeypatch.delitem(remote_decoding.REMOTE_STRATEGIES, "cards")
    with pytest.raises(ConfigError, match="'cards' has no remote implementation"):
        generate(remote, "hi", strategy="cards", reward=KEYWORDS)
    assert server.requests == []


# --------------------------------------------------------------------------- failures


def test_server_error_is_not_retried(remote: RemoteModel, server: CompletionsServer) -> None:
    server.faults.statuses.extend([(500, {})])
    with pytest.raises(BackendServerError) as err:
        generate(remote, "hi", strategy="best_of_n", reward=KEYWORDS, n=2, max_new_tokens=4)
    assert err.value.status == 500 and "injected 500" in str(err.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_statuses_are_retried(remote: RemoteModel, server: CompletionsServer, status: int) -> None:
    server.faults.statuses.extend([(status, {"retry-after": "0"}), (status, {})])
    result = generate(remote, "hi", strategy="best_of_n", reward=KEYWORDS, n=2, max_new_tokens=4)
    assert result.stats.extra["retries"] == 2 and len(server.requests) == 3


def test_retries_are_bounded(server: CompletionsServer, tiny_model_dir: str) -> None:
    handle = connect_model(server.base_url, tokenizer=tiny_model_dir, max_retries=2, backoff=0.01)
    try:
        server.faults.statuses.extend([(503, {})] * 10)
        with pytest.raises(BackendServerError, match="after 3 attempts") as err:
            generate(handle, "hi", max_new_tokens=3)
        assert err.value.status == 503 and len(server.requests) == 3
    finally:
        handle.close()


def test_client_errors_name_the_server_message(remote: RemoteModel, server: CompletionsServer) -> None:
    server.faults.statuses.extend([(401, {})])
    with pytest.raises(BackendRequestError, match="api_key"):
        generate(remote, "hi", max_new_tokens=3)
    with pytest.raises(BackendRequestError, match="maximum context length") as err:
        remote.propose(remote.render("hi"), 1, max_tokens=100_000)
    assert err.value.status == 400


def test_a_slow_server_is_a_timeout_error(server: CompletionsServer, tiny_model_dir: str) -> None:
    handle = connect_model(server.base_url, tokenizer=tiny_model_dir, timeout=0.3)
    try:
        server.faults.delay = 1.0
        with pytest.raises(BackendTimeoutError, match="did not answer within 0.3s"):
            generate(handle, "hi", strategy="best_of_n", reward=KEYWORDS, n=2, max_new_tokens=3)
    finally:
        handle.close()


def test_a_server_without_logprobs_is_a_feature_error(remote: RemoteModel, server: CompletionsServer) -> None:
    server.faults.no_logprobs = True
    with pytest.raises(BackendFeatureError, match="no log-probs"):
        generate(remote, "hi", strategy="args", reward=KEYWORDS, max_new_tokens=3)


# --------------------------------------------------------------------------- metadata and CLI


def test_report_says_where_the_work_ran(remote: RemoteModel) -> None:
    from shared_core import Request

    request = Request.build(remote, "hi", strategy="deal", reward=KEYWORDS, max_new_tokens=6, top_k=2, lookahead=2)
    result = generate(request)
    meta = report(result, request)
    assert meta["model"] == "tiny" and meta["strategy"] == "deal"
    extra = meta["stats"]["extra"]
    assert extra["backend"] == "remote" and extra["base_url"] == remote.base_url
    assert extra["requests"] >= 2 and extra["tokens_proposed"] > 0
    json.dumps(meta)


def test_cli_generate_on_a_remote_server(server: CompletionsServer, tiny_model: LocalModel, tiny_model_dir: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from shared_core.cli import app

    monkeypatch.setattr(server, "served_name", tiny_model_dir)  # a served id that is a local folder: its tokenizer
    out = CliRunner().invoke(app, ["generate", "--base-url", server.base_url, "--json", "-n", "5", PROMPTS[0]])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["text"] == generate(tiny_model, PROMPTS[0], max_new_tokens=5).text
    assert payload["new_tokens"] == 5


def test_cli_models_path_prints_the_embedded_folder(smollm2: LocalModel) -> None:
    from shared_core.cli import app

    out = CliRunner().invoke(app, ["models", "--path", "smollm2"])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == smollm2.source
    bad = CliRunner().invoke(app, ["models", "--path", "nosuch"])
    assert bad.exit_code == 2 and "not an embedded model" in bad.output


def test_speculative_rejection_prunes_with_one_request_per_check(remote: RemoteModel, server: CompletionsServer) -> None:
    longest = lambda texts: [float(len(t)) for t in texts]  # noqa: E731 - a reward function
    result = generate(remote, PROMPTS[1], strategy="speculative_rejection", reward=longest, n=4, first_check=2,
                      rejection_rate=0.5, seed=1, max_new_tokens=10)
    extra = result.stats.extra
    assert server.requests[0]["n"] == 4 and server.requests[0]["max_tokens"] == 2
    assert [(c["length"], c["kept"]) for c in extra["checks"]] == [(2, 2), (4, 1)]  # then one left: no check
    assert extra["requests"] == len(server.requests) == 4  # the first n, then one per check's survivors
    prompts = [len(b["prompt"]) if isinstance(b["prompt"][0], list) else 1 for b in server.requests[1:]]
    assert prompts == [2, 1, 1]  # the survivors continued, in one request per check
    assert result.stats.new_tokens == 10 and result.reward is not None


def test_prompt_logprobs_match_the_local_model(remote: RemoteModel, server: CompletionsServer,
                                               tiny_model: LocalModel) -> None:
    import torch

    ids = tiny_model.render(PROMPTS[1])
    got = remote.prompt_logprobs(ids)
    with torch.no_grad():
        logits = tiny_model.model(input_ids=torch.tensor([ids])).logits[0].float()
    want = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert got[0] is None and len(got) == len(ids)
    assert torch.allclose(torch.tensor(got[1:]), want, atol=1e-4)
    assert server.requests[-1]["prompt_logprobs"] == 0
    server.faults.no_logprobs = True
    with pytest.raises(BackendFeatureError, match="prompt_logprobs"):
        remote.prompt_logprobs(ids)


def test_top_entropy_is_a_lower_bound_of_the_entropy() -> None:
    import torch

    from shared_core.backends.remote_decoding import top_entropy

    logprobs = torch.log_softmax(torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 2, -1)
    exact = float(-(logprobs.exp() * logprobs).sum())
    top = torch.topk(logprobs, 20)
    estimate = top_entropy(list(zip(top.indices.tolist(), top.values.tolist())))
    assert estimate <= exact + 1e-6 and estimate > 0.5 * exact
    full = torch.topk(logprobs, 1000)
    assert abs(top_entropy(list(zip(full.indices.tolist(), full.values.tolist()))) - exact) < 1e-4


def test_cards_tries_segments_with_one_request_each(remote: RemoteModel, server: CompletionsServer) -> None:
    longest = lambda texts: [float(len(t)) for t in texts]  # noqa: E731 - a reward function
    result = generate(remote, PROMPTS[1], strategy="cards", reward=longest, candidates=2, min_segment=2,
                      max_segment=4, seed=0, max_new_tokens=12)
    extra = result.stats.extra
    assert extra["requests"] == extra["tries"] == len(server.requests) >= extra["segments"] >= 3
    assert all(body["n"] == 2 and body["logprobs"] == 20 and body["max_tokens"] <= 5 for body in server.requests)
    assert result.stats.new_tokens == 12 and 2 <= extra["mean_segment_tokens"] <= 4


def test_a_greedy_batch_is_one_request_with_a_list_of_prompts(remote: RemoteModel, server: CompletionsServer,
                                                              tiny_model: LocalModel) -> None:
    got = generate(remote, PROMPTS, max_new_tokens=6)
    want = generate(tiny_model, PROMPTS, max_new_tokens=6)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert len(server.requests) == 1 and len(server.requests[0]["prompt"]) == len(PROMPTS)
    assert all(r.stats.extra["shared_request"] == len(PROMPTS) for r in got)
    server.requests.clear()
    seeded = generate(remote, PROMPTS[:2], strategy="sample", temperature=1.0, seed=5, max_new_tokens=4)
    assert [body["seed"] for body in server.requests] == [5, 6]  # seed + i per prompt, as locally
    assert len(seeded) == 2


def test_deal_repairs_premature_endings_remotely(remote: RemoteModel, server: CompletionsServer) -> None:
    server.faults.eos_after = 3  # every rollout ends two tokens after its candidate, short of the keyword
    result = generate(remote, PROMPTS[0], strategy="deal", reward=KEYWORDS, top_k=3, lookahead=4, max_new_tokens=30)
    extra = result.stats.extra
    assert extra["repairs"] == 3  # the local search's limit
    assert extra["requests"] == len(server.requests) == extra["searches"] + 1 + extra["repairs"]
    probes = [body for body in server.requests if body["max_tokens"] == 1]
    assert [body["logprobs"] for body in probes] == [3, 19, 19, 19]  # repairs look past the ending tokens
    assert result.finish_reason == "eos"


def test_closing_a_remote_stream_cancels_it(remote: RemoteModel) -> None:
    deltas = stream(remote, PROMPTS[1], max_new_tokens=40)
    first = next(deltas)
    deltas.close()
    result = deltas.result
    assert result.finish_reason == "cancelled" and result.text.startswith(first)
    assert 0 < result.stats.new_tokens < 40


def test_local_and_remote_backends_offer_the_same_operations(remote: RemoteModel, tiny_model: LocalModel) -> None:
    from shared_core.backends.base import Backend
    from shared_core.backends.local import LocalBackend

    local = LocalBackend(tiny_model)
    assert isinstance(local, Backend) and isinstance(remote, Backend)
    assert local.capabilities == LOCAL_CAPABILITIES and remote.capabilities < local.capabilities
    ids = local.render(PROMPTS[0])
    assert ids == remote.render(PROMPTS[0])
    local_top, remote_top = local.top_next(ids, 5), remote.top_next(ids, 5)
    assert local_top[0] == remote_top[0]
    assert max(abs(a - b) for a, b in zip(local_top[1], remote_top[1])) < 1e-4
    local_greedy = local.propose(ids, 2, max_tokens=6, temperature=0.0)
    remote_greedy = remote.propose(ids, 2, max_tokens=6, temperature=0.0)
    assert [c.token_ids for c in local_greedy] == [c.token_ids for c in remote_greedy]
    assert local_greedy[0].token_ids == local_greedy[1].token_ids
    assert local.stats.forward_passes["policy"] == 1 + 1 + 5  # top_next's prefill, then propose's prefill + steps
    logits, cache = local.next_logits(ids)
    assert int(logits.argmax()) == local_top[0][0] and cache.get_seq_length() == len(ids)


def test_token_strings_map_to_ids_or_fail_clearly(remote: RemoteModel, tiny_model: LocalModel) -> None:
    assert remote._token_id("token_id:5") == 5
    (the,) = tiny_model.encode(" the")
    assert remote._token_id(" the") == the  # decoded text of one token
    assert remote._token_id(tiny_model.tokenizer.convert_ids_to_tokens(the)) == the  # the raw token string
    with pytest.raises(BackendFeatureError, match="does not map to one token id"):
        remote._token_id(" antidisestablishmentarianism")
