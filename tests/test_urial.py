"""URIAL prompt building, chat rendering and answer parsing (pure text, fast)."""

from __future__ import annotations

import ast
import doctest
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import shared_core.urial as urial
from shared_core.errors import ConfigError
from shared_core.urial import (
    FORMAT_NOTE,
    URIAL_STOP_STRINGS,
    VARIANTS,
    UrialExample,
    UrialPrompt,
    build_urial_prompt,
    check_fits,
    default_examples,
    default_preamble,
    parse_urial_answer,
    preamble_text,
    query_suffix,
    urial_chat_messages,
    urial_prompt,
)

OPEN = "# Answer:\n```\n"
CODE_ANSWER = (
    "Use a list comprehension:\n\n```python\nsquares = [x * x for x in range(5)]\nprint(squares)\n```\n\n"
    "It prints `[0, 1, 4, 9, 16]`."
)
PAIR = re.compile(r"# Query:\n```(.*?)```\n\n# Answer:\n```\n(.*?)\n```\n\n(?=# Query:)", re.DOTALL)


def pairs_in(prompt: str) -> list[tuple[str, str]]:
    """The (query, answer) pairs rendered in a text prompt, in order."""
    return PAIR.findall(prompt)


def final_query(prompt: str) -> str:
    """The query of the last, open turn."""
    last_turn = "# Query:\n```" + prompt.rpartition("\n\n# Query:\n```")[2]
    match = re.fullmatch(r"# Query:\n```(.*)```\n\n# Answer:\n```\n", last_turn, re.DOTALL)
    assert match, prompt[-200:]
    return match.group(1)


def generate(continuation: str) -> str:
    """What a generator keeps of ``continuation`` with URIAL_STOP_STRINGS (text before the first match)."""
    hits = [i for i in (continuation.find(s) for s in URIAL_STOP_STRINGS) if i >= 0]
    return continuation[: min(hits)] if hits else continuation


@contextmanager
def raises(field: str, *fragments: str) -> Iterator[None]:
    """Expects a ConfigError on ``field`` whose message contains every fragment."""
    with pytest.raises(ConfigError) as info:
        yield
    message = str(info.value)
    assert info.value.field == field, message
    assert message.startswith(f"{field}: "), message
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------------------------------
# Building


def test_prompt_layout_with_default_safe_examples():
    prompt = build_urial_prompt("How do I boil an egg?")
    assert prompt.startswith(f"# Instruction\n\n{FORMAT_NOTE}\n\n{default_preamble()}\n\n# Query:\n```")
    assert prompt.endswith("# Query:\n```How do I boil an egg?```\n\n# Answer:\n```\n")
    assert pairs_in(prompt) == [(e.query, e.answer) for e in default_examples("safe")]
    assert final_query(prompt) == "How do I boil an egg?"


def test_variants_are_k3_and_only_safe_has_a_refusal():
    safe, helpful = default_examples("safe"), default_examples("help")
    assert len(safe) == len(helpful) == 3
    assert set(VARIANTS) == {"safe", "help"}
    refusals = [e for e in safe if e not in helpful]
    assert len(refusals) == 1
    assert "can't help" in refusals[0].answer and "instead" in refusals[0].answer
    assert not any("can't help" in e.answer for e in helpful)
    assert pairs_in(build_urial_prompt("q", variant="help")) == [(e.query, e.answer) for e in helpful]


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_examples_are_structured_and_parse_back_exactly(variant):
    for example in default_examples(variant):
        assert "\n- " in example.answer or "\n1. " in example.answer  # bullets or steps
        assert parse_urial_answer(example.answer + "\n```\n\n# Query:\n```next```") == example.answer
        assert generate(example.answer + "\n```\n\n# Query:\n```next```") == example.answer


def test_round_trip_build_generate_parse():
    prompt = build_urial_prompt("Give me a tip for learning Python.")
    answer = "Practice daily.\n\n- Write small scripts.\n- Read other people's code.\n\nHave fun!"
    continuation = f"{answer}\n```\n\n# Query:\n```What else?```\n\n# Answer:\n```\nMore."
    assert prompt.endswith(OPEN)
    assert parse_urial_answer(continuation) == answer
    assert parse_urial_answer(generate(continuation)) == answer


def test_round_trip_through_a_conversation():
    conversation = [{"role": "user", "content": "Show me a list comprehension."}]
    answer = parse_urial_answer(generate(CODE_ANSWER + "\n```\n\n# Query:\n```x```"))
    assert answer == CODE_ANSWER
    conversation += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Thanks!"}]
    prompt = build_urial_prompt(conversation)
    assert pairs_in(prompt)[-1] == ("Show me a list comprehension.", CODE_ANSWER)
    assert final_query(prompt) == "Thanks!"


def test_custom_examples_in_every_accepted_form_keep_their_order():
    examples = [
        {"query": "What is 2 + 2?", "answer": "2 + 2 = 4.", "id": 7},
        ("Capital of France?", "Paris."),
        UrialExample(query="Say hi.", answer="Hi!"),
    ]
    prompt = build_urial_prompt("Name a colour.", examples=examples)
    assert pairs_in(prompt) == [
        ("What is 2 + 2?", "2 + 2 = 4."),
        ("Capital of France?", "Paris."),
        ("Say hi.", "Hi!"),
    ]
    assert all(e.query not in prompt for e in default_examples("safe"))
    assert final_query(prompt) == "Name a colour."


def test_custom_preamble_replaces_the_default_and_keeps_the_format_note():
    prompt = build_urial_prompt("q", preamble="  Answer like a pirate.\r\n")
    assert prompt.startswith(f"# Instruction\n\n{FORMAT_NOTE}\n\nAnswer like a pirate.\n\n# Query:")
    assert default_preamble() not in prompt


def test_example_text_is_normalised():
    example = UrialExample("  Hi?\r\n", "\r\nLine one\r\nLine two  ")
    assert (example.query, example.answer) == ("Hi?", "Line one\nLine two")
    assert "\r" not in build_urial_prompt("Ok?\r\nSure?", examples=[example])


# --------------------------------------------------------------------------------------------------
# Prefix and suffix


def test_preamble_plus_suffix_is_exactly_the_prompt():
    kwargs = {"variant": "help", "preamble": "Be brief."}
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    for query in ["What is a prime?", conversation]:
        prefix, suffix = preamble_text(**kwargs), query_suffix(query)
        assert build_urial_prompt(query, **kwargs) == prefix + suffix
        assert urial_prompt(query, **kwargs) == UrialPrompt(prefix=prefix, suffix=suffix)
        assert prefix.endswith("\n```\n\n") and suffix.startswith("# Query:")
        assert suffix.endswith(OPEN)


def test_prefix_does_not_depend_on_the_query():
    first, second = urial_prompt("one"), urial_prompt([{"role": "user", "content": "two"}])
    assert first.prefix == second.prefix == preamble_text()
    assert first.suffix != second.suffix
    assert first.text == first.prefix + first.suffix


def test_system_message_extends_the_preamble_in_the_prefix():
    messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello?"}]
    prompt = urial_prompt(messages, preamble="Be kind.")
    assert prompt.prefix == preamble_text(preamble="Be kind.\n\nAnswer in French.")
    assert prompt.suffix == query_suffix("Hello?")
    with raises("messages[0].role", "urial_prompt"):
        query_suffix(messages)


# --------------------------------------------------------------------------------------------------
# Multi-turn


def test_earlier_turns_follow_the_examples_in_order_and_the_query_comes_last():
    messages = [
        {"role": "user", "content": "My name is Ana."},
        {"role": "assistant", "content": "Nice to meet you, Ana!"},
        {"role": "user", "content": "I like tea."},
        {"role": "assistant", "content": "Tea is lovely."},
        {"role": "user", "content": "What is my name?"},
    ]
    examples = [("a?", "A.")]
    prompt = build_urial_prompt(messages, examples=examples)
    assert pairs_in(prompt) == [
        ("a?", "A."),
        ("My name is Ana.", "Nice to meet you, Ana!"),
        ("I like tea.", "Tea is lovely."),
    ]
    assert final_query(prompt) == "What is my name?"


def test_consecutive_messages_of_one_role_are_merged():
    messages = [
        {"role": "user", "content": "Part one."},
        {"role": "user", "content": "Part two."},
        {"role": "assistant", "content": "Got it."},
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Go on."},
    ]
    prompt = build_urial_prompt(messages, examples=[("a?", "A.")], preamble="P.")
    assert pairs_in(prompt) == [("a?", "A."), ("Part one.\n\nPart two.", "Got it.")]
    assert prompt.startswith(f"# Instruction\n\n{FORMAT_NOTE}\n\nP.\n\nBe terse.\n\n# Query:")
    assert final_query(prompt) == "Go on."


# --------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        # the usual ending, with and without what follows the closing fence
        ("Hello!\n```\n\n# Query:\n```Next?```\n\n# Answer:\n```\nHi", "Hello!"),
        ("Hello!\n```\n", "Hello!"),
        ("Hello!\n```", "Hello!"),
        ("  Hello!  \n\n```   \n\n\n", "Hello!"),
        # a code block with a language tag inside the answer stays intact
        (CODE_ANSWER + "\n```\n\n# Query:", CODE_ANSWER),
        # an answer that ends with a code block: its fence closes the block, the next one the answer
        ("See:\n```python\nx = 1\n```\n```\n\n# Query:", "See:\n```python\nx = 1\n```"),
        # unlabelled inner blocks, in the middle, at the start and at the end of the answer
        ("Run:\n```\nls -la\n```\nThen read.\n```\n", "Run:\n```\nls -la\n```\nThen read."),
        ("```\nls -la\n```\nThat lists files.\n```\n\n# Query:", "```\nls -la\n```\nThat lists files."),
        ("Run:\n```\nls\n```\n```\n", "Run:\n```\nls\n```"),
        # the model repeats the prompt's opening fence
        ("```\nHello!\n```\n\n# Query:", "Hello!"),
        ("\n```\nSee:\n```python\nx = 1\n```\n```\n", "See:\n```python\nx = 1\n```"),
        ("```\nHello, wor", "Hello, wor"),
        # the caller passed the answer header too
        ("# Answer:\n```\nHello!\n```\n\n# Query:", "Hello!"),
        # truncated by the token budget: no closing fence
        ("Here are the steps:\n1. Open the", "Here are the steps:\n1. Open the"),
        ("Code:\n```python\nprint(", "Code:\n```python\nprint("),
        ("Code:\n```\nprint(", "Code:\n```\nprint("),
        # truncated in the middle of the next header or of the closing fence
        ("Hello!\n```\n\n# Que", "Hello!"),
        ("Hello!\n```\n\n#", "Hello!"),
        ("Hello!\n```\n\n# Query", "Hello!"),
        ("Hello!\n``", "Hello!"),
        # a stray answer header, or a header right after the answer without a closing fence
        ("Hello!\n\n# Answer:\n```\nAgain", "Hello!"),
        ("Hello!\n\n# Query:\n```x```", "Hello!"),
        # the fence closed, then stray text, then the next turn: the stray text is not the answer
        ("Hello!\n```\nsome noise\n# Query:\n```x```", "Hello!"),
        # Windows newlines
        ("Hi!\r\n\r\n- one\r\n- two\r\n```\r\n\r\n# Query:", "Hi!\n\n- one\n- two"),
        # nothing useful
        ("", ""),
        ("```\n\n# Query:", ""),
    ],
)
def test_parse_urial_answer(continuation, expected):
    assert parse_urial_answer(continuation) == expected


def test_parse_keeps_headings_and_comments_that_are_not_turn_headers():
    answer = "# Answering well\n\nSteps:\n\n```python\n# Query the table\nrows = db.all()\n```\n\nDone."
    assert parse_urial_answer(answer + "\n```\n\n# Query:") == answer


def test_parse_of_a_clean_reply_is_the_identity():
    assert parse_urial_answer(CODE_ANSWER) == CODE_ANSWER
    assert parse_urial_answer("Just text.") == "Just text."


def test_parse_rejects_non_text():
    with raises("text", "must be a string"):
        parse_urial_answer(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Stop strings


def test_stop_strings_end_before_the_closing_fence_and_at_the_next_header():
    assert any(stop.strip() == "# Query:" for stop in URIAL_STOP_STRINGS)
    assert generate(CODE_ANSWER + "\n```\n\n# Query:\n```x```") == CODE_ANSWER
    assert generate("Hi!\n```\n# Query:") == "Hi!\n```"
    assert generate("Hi!\n\n# Answer:\n```\n") == "Hi!\n"


def test_stop_strings_ignore_code_comments_and_inner_fences():
    text = "Use:\n```python\n    # Query the table\nrows = 1  # Query: all\n```\n\n# Notes\nDone."
    assert generate(text) == text


# --------------------------------------------------------------------------------------------------
# Chat rendering


def test_chat_messages_shape():
    messages = urial_chat_messages("What is tea?", variant="help")
    examples = default_examples("help")
    assert messages[0] == {"role": "system", "content": default_preamble()}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * len(examples) + ["user"]
    assert messages[-1] == {"role": "user", "content": "What is tea?"}
    assert all(set(m) == {"role", "content"} for m in messages)
    for message in messages[2:-1:2]:  # assistant answers carry no outer fence
        assert not message["content"].startswith("```") and not message["content"].endswith("\n```")


def test_chat_messages_hold_the_same_turns_as_the_text_prompt():
    conversation = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": CODE_ANSWER},
        {"role": "user", "content": "Thanks!"},
    ]
    chat = urial_chat_messages(conversation, preamble="P.")
    text = build_urial_prompt(conversation, preamble="P.")
    assert chat[0] == {"role": "system", "content": "P.\n\nBe terse."}
    chat_pairs = [(chat[i]["content"], chat[i + 1]["content"]) for i in range(1, len(chat) - 1, 2)]
    assert chat_pairs == pairs_in(text)
    assert chat[-1]["content"] == final_query(text) == "Thanks!"
    assert chat_pairs[-1] == ("Hi.", CODE_ANSWER)
    # a reply from a chat model parses to itself; one wrapped in a bare fence is unwrapped
    assert parse_urial_answer(CODE_ANSWER) == CODE_ANSWER
    assert parse_urial_answer(f"```\n{CODE_ANSWER}\n```") == CODE_ANSWER


def test_chat_messages_validate_like_the_text_prompt():
    with raises("examples", "at least one example"):
        urial_chat_messages("q", examples=[])
    with raises("messages[1].role", "last message"):
        urial_chat_messages([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])


# --------------------------------------------------------------------------------------------------
# Errors


def test_example_errors_name_the_field():
    with raises("examples", "at least one example"):
        build_urial_prompt("q", examples=[])
    with raises("examples[1].answer", "must be a non-empty string"):
        build_urial_prompt("q", examples=[("a", "b"), {"query": "c", "answer": "  "}])
    with raises("examples[1].answer", "missing", "'query', 'response'"):
        build_urial_prompt("q", examples=[("a", "b"), {"query": "c", "response": "d"}])
    with raises("examples[0].query", "must be a non-empty string", "int"):
        build_urial_prompt("q", examples=[(3, "b")])
    with raises("examples[2]", "(query, answer)", "3 items"):
        build_urial_prompt("q", examples=[("a", "b"), ("c", "d"), ("e", "f", "g")])
    with raises("examples[0]", "got str"):
        build_urial_prompt("q", examples=["just a string"])
    with raises("examples", "got str"):
        build_urial_prompt("q", examples="a, b")  # type: ignore[arg-type]
    with raises("examples", "got dict"):
        build_urial_prompt("q", examples={"query": "a", "answer": "b"})  # type: ignore[arg-type]
    with raises("examples[0].answer", "'# Query:'"):
        build_urial_prompt("q", examples=[("a", "b\n# Query:\nmore")])
    with raises("answer", "must be a non-empty string"):
        UrialExample("a", "")


def test_variant_and_preamble_errors():
    with raises("variant", "'chatty'", "'safe', 'help'"):
        build_urial_prompt("q", variant="chatty")  # type: ignore[arg-type]
    with raises("variant", "'safe', 'help'"):
        build_urial_prompt("q", variant="nope", examples=[("a", "b")])  # type: ignore[arg-type]
    with raises("variant", "valid variants"):
        default_examples("nope")  # type: ignore[arg-type]
    with raises("variant"):
        preamble_text(variant=["safe"])  # type: ignore[arg-type]
    with raises("preamble", "non-empty string"):
        build_urial_prompt("q", preamble="   ")


def test_query_and_message_errors():
    with raises("query", "non-empty string"):
        build_urial_prompt("   ")
    with raises("query", "got int"):
        build_urial_prompt(5)  # type: ignore[arg-type]
    with raises("query", "got dict"):
        build_urial_prompt({"role": "user", "content": "hi"})  # type: ignore[arg-type]
    with raises("messages", "at least one message"):
        build_urial_prompt([])
    with raises("messages[1].role", "unknown role 'tool'", "'system', 'user', 'assistant'"):
        build_urial_prompt([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with raises("messages[1].role", "last message must be from the user", "'assistant'"):
        build_urial_prompt([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with raises("messages[1].role", "last message", "'system'"):
        build_urial_prompt([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with raises("messages[0].role", "must follow a user message"):
        build_urial_prompt([{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "a"}])
    with raises("messages[0].content", "non-empty string"):
        build_urial_prompt([{"role": "user", "content": ""}])
    with raises("messages[0].content", "None"):
        build_urial_prompt([{"role": "user"}])
    with raises("messages[0]", "expected a dict", "str"):
        build_urial_prompt(["hello"])


# --------------------------------------------------------------------------------------------------
# Context window


def test_check_fits_accepts_prompts_that_fit():
    check_fits(2048, 2048)
    check_fits(1000, 2048, reserve_tokens=1048)


def test_check_fits_names_both_lengths():
    with raises("preamble", "urial preamble is 5000 tokens but the model's context window is 2048 tokens"):
        check_fits(5000, 2048)
    with raises("preamble", "1900 tokens", "256 more", "context window is 2048 tokens"):
        check_fits(1900, 2048, reserve_tokens=256)


def test_check_fits_rejects_bad_counts():
    with raises("prompt_tokens", "-1"):
        check_fits(-1, 2048)
    with raises("context_window", "positive integer"):
        check_fits(10, 0)
    with raises("reserve_tokens", "2.5"):
        check_fits(10, 100, reserve_tokens=2.5)  # type: ignore[arg-type]
    with raises("context_window"):
        check_fits(10, True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Module


def test_module_is_pure_text():
    tree = ast.parse(Path(urial.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "transformers", "numpy", "langchain_core", "llama_index"}


def test_docstring_examples_run():
    result = doctest.testmod(urial)
    assert result.attempted >= 5 and result.failed == 0


def test_find_answer_end_stops_at_a_closed_outer_fence() -> None:
    from shared_core.urial import find_answer_end

    drifting = "The sky is blue.\n```\n\n- Use reflect()"
    assert drifting[: find_answer_end(drifting)] == "The sky is blue."
    with_code = "Run:\n```python\nprint(1)\n```\n\nThen done.\n```\n\n"
    assert with_code[: find_answer_end(with_code)] == "Run:\n```python\nprint(1)\n```\n\nThen done."
    assert find_answer_end("Still writing\n```\n") == -1  # no blank line yet: could be an inner block
    assert find_answer_end("No fence yet.\n\n") == -1
