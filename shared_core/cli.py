"""The ``deal`` command line: ``deal generate``, ``deal demo``, ``deal models``, ``deal strategies``, ``deal serve``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from shared_core.errors import DealError

app = typer.Typer(
    name="deal",
    help="Test-time alignment: reward-guided decoding on local models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def parse_param(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, booleans, lists), else a string."""
    if "=" not in item:
        raise DealError(f"--param: expected KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise DealError(f"--param: empty key in {item!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def parse_reward_option(raw: str | None) -> Any:
    """``--reward`` takes a JSON spec or a policy name; JSON-looking text must be valid JSON."""
    if raw is None:
        return None
    text = raw.strip()
    if text[:1] in "{[\"" or text[:1].isdigit():
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DealError(f"--reward: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): {raw!r}") from exc
    return text


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _connect(base_url: str, model: str, api_key: str | None) -> Any:
    """The remote model ``deal generate --base-url`` decodes on; ``--model`` left at its default means the served one."""
    from shared_core.backends.remote import connect_model
    from shared_core.errors import ConfigError
    from shared_core.models import DEFAULT_MODEL

    try:
        return connect_model(base_url, model=model, api_key=api_key)
    except ConfigError as exc:
        if exc.field != "model" or model != DEFAULT_MODEL:
            raise
        return connect_model(base_url, model=None, api_key=api_key)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as a user message to chat models).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Embedded alias, model folder, .gguf file or hub id.")] = "smollm2",
    strategy: Annotated[Optional[str], typer.Option("--strategy", "-s", help="A registered strategy (see `deal strategies`); default: the policy's, else the one that moves the reward, else greedy.")] = None,
    reward: Annotated[Optional[str], typer.Option("--reward", "-r", help="Reward spec as JSON, or a policy name.")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help="A named policy (reward + strategy + parameters).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Strategy parameter KEY=VALUE, or repetition_penalty=X (repeatable).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate.")] = 256,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")] = None,
    urial: Annotated[bool, typer.Option("--urial", help="Align with the URIAL in-context prompt (for base models).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Decode on an OpenAI-compatible server (vLLM, SGLang, llama.cpp server) at this URL; --model is then the served model id.")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="API key for --base-url (sent as a bearer token).")] = None,
) -> None:
    """Generate a continuation, optionally steered by a reward."""
    from shared_core import decoding
    from shared_core.models import load_model
    from shared_core.request import Request, report

    try:
        params = dict(parse_param(p) for p in (param or []))
        reward_value = parse_reward_option(reward)
        _quiet_transformers()
        # plan and validate everything (strategy, params, reward, prompt) once, before loading weights
        request = Request.build(model, prompt, strategy=strategy, reward=reward_value, policy=policy,
                                max_new_tokens=max_new_tokens, stop=stop, seed=seed, urial=urial, **params)
        if base_url is not None:
            request.model = _connect(base_url, model, api_key)
        else:
            request.model = load_model(model, device=device)
        if as_json:
            result = decoding.run(request)
            assert not isinstance(result, list)
            summary = report(result, request)
            payload = {
                "text": result.text,
                "strategy": result.strategy,
                "model": model,
                "policy": summary["policy"],
                "chosen_by": summary["chosen_by"],
                "finish_reason": result.finish_reason,
                "new_tokens": result.stats.new_tokens,
                "prompt_tokens": result.stats.prompt_tokens,
                "seconds": round(result.stats.seconds, 4),
                "forward_passes": result.stats.forward_passes,
                "reward": summary["reward"],
                "reward_error": result.reward_error,
            }
            typer.echo(json.dumps(payload, ensure_ascii=False))
            return
        text_stream = decoding.stream(request)
        for delta in text_stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except DealError as exc:
        _fail(str(exc))


@app.command()
def demo(
    model: Annotated[str, typer.Option("--model", "-m", help="The model to demonstrate on.")] = "smollm2",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 64,
    quick: Annotated[bool, typer.Option("--quick", help="One prompt per reward instead of all.")] = False,
) -> None:
    """Plain greedy vs aligned decoding, side by side, on the embedded model."""
    from shared_core.demo import run_demo

    try:
        _quiet_transformers()
        run_demo(model=model, max_new_tokens=max_new_tokens, quick=quick)
    except DealError as exc:
        _fail(str(exc))


@app.command()
def models(
    path: Annotated[Optional[str], typer.Option("--path", help="Print the converted Hugging Face folder of this embedded model (e.g. for vLLM's --model).")] = None,
) -> None:
    """List the embedded model aliases (they work offline)."""
    from shared_core.models import DEFAULT_MODEL, EMBEDDED_MODELS

    if path is not None:
        from shared_core.models import resolve_model_source

        if path not in EMBEDDED_MODELS:
            _fail(f"--path: {path!r} is not an embedded model; embedded: {', '.join(sorted(EMBEDDED_MODELS))}")
        try:
            _quiet_transformers()
            typer.echo(resolve_model_source(path))
        except DealError as exc:
            _fail(str(exc))
        return
    for alias, info in EMBEDDED_MODELS.items():
        mark = " (default)" if alias == DEFAULT_MODEL else ""
        typer.echo(f"{alias}{mark}: {info.description}")


@app.command()
def strategies() -> None:
    """List the registered decoding strategies and their parameters."""
    from shared_core.decoding import get_strategy, list_strategies

    for name in list_strategies():
        cls = get_strategy(name)
        fields = ", ".join(f"{k}={v.default!r}" for k, v in cls.Params.model_fields.items())
        typer.echo(f"{name}: {cls.description}" + (f"  [{fields}]" if fields else ""))
    typer.echo("every strategy: repetition_penalty (default 1, or 1.2 with --urial), penalize_layout=False")


@app.command("train-arm")
def train_arm_command(
    out: Annotated[str, typer.Option("--out", "-o", help="Folder to write the trained ARM to.")],
    base: Annotated[str, typer.Option("--base", "-b", help="Model to start from (share the policy's tokenizer).")] = "smollm2",
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="JSON lines of prompt/chosen/rejected; default: the shipped example (concise over verbose).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the pairs.")] = 2,
    beta: Annotated[float, typer.Option("--beta", help="Bradley-Terry scale on the log-likelihood margin.")] = 0.1,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pairs per step.")] = 4,
    layers: Annotated[int, typer.Option("--layers", help="Top decoder layers to train (0 = all parameters).")] = 4,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="Margins relative to the frozen base (DPO form).")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: torch's choice).")] = None,
) -> None:
    """Train an autoregressive reward model (ARM) for `--strategy genarm` from preference pairs."""
    from shared_core.arm_training import train_arm

    try:
        _quiet_transformers()
        if threads:
            import torch

            torch.set_num_threads(threads)
        report = train_arm(base, data, out, epochs=epochs, beta=beta, learning_rate=lr, batch_size=batch_size,
                           train_layers=layers or None, reference=reference, seed=seed, log=typer.echo)
    except DealError as exc:
        _fail(str(exc))
        return
    typer.echo(f"ARM written to {report.out_dir} in {report.seconds:.0f}s "
               f"(loss {report.epoch_losses[0]:.4f} -> {report.epoch_losses[-1]:.4f}). Use it with:")
    spec = json.dumps({"type": "arm", "model": report.out_dir, "weight": 1.0})
    typer.echo(f"  deal generate \"...\" -m {base} -s genarm -r '{spec}'")


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="Embedded alias, model folder or hub id; with --base-url, the served model's name.")] = "smollm2",
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Decode on a remote OpenAI-compatible engine (vLLM ...) instead of a local model.")] = None,
    remote_api_key: Annotated[Optional[str], typer.Option("--remote-api-key", help="API key for --base-url.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    policies: Annotated[Optional[str], typer.Option("--policies", help="JSON or YAML file of named policies (name -> policy or reward spec).")] = None,
    api_key: Annotated[Optional[list[str]], typer.Option("--api-key", help="Accept this key as 'Authorization: Bearer KEY' (repeatable; none: no auth).")] = None,
    allow_model_rewards: Annotated[bool, typer.Option("--allow-model-rewards", help="Let requests send inline reward specs that load models (classifier, safety, arm).")] = False,
    served_name: Annotated[Optional[str], typer.Option("--served-name", help="The model id clients send (default: --model).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most new tokens a request may ask for.")] = 1024,
    max_n: Annotated[int, typer.Option("--max-n", help="Most choices (n) per request.")] = 4,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait before new ones get 429.")] = 64,
    max_running: Annotated[int, typer.Option("--max-running", help="Requests decoding at once (a quarter of them, at least one, reward-guided).")] = 16,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body (413 above).")] = 1_000_000,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Serve a model behind an OpenAI-compatible API with per-request alignment (needs the `server` extra)."""
    try:
        from shared_core.server import Limits, ServerSettings, load_policies_file
        from shared_core.server import serve as run_server
    except ImportError as exc:
        _fail(f"deal serve needs the server extra: pip install 'deal[server]' ({exc})")
        return
    try:
        _quiet_transformers()
        limits = Limits(max_tokens=max_tokens, default_max_tokens=min(256, max_tokens), max_n=max_n,
                        max_queue=max_queue, max_running=max_running, max_body_bytes=max_body_bytes)
        settings = ServerSettings(
            model=model, base_url=base_url, remote_api_key=remote_api_key, served_name=served_name,
            api_keys=tuple(api_key or ()), policies=load_policies_file(policies) if policies else {},
            allow_model_rewards=allow_model_rewards, limits=limits, device=device,
        )
        typer.echo(f"loading {model} ...", err=True)
        run_server(settings, host=host, port=port)
    except DealError as exc:
        _fail(str(exc))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
