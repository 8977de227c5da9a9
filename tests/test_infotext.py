"""The A1111 infotext reader: the same reading as A1111's regex (a reference written here from
A1111's published parser), in linear time, and an exact round trip of any prompt."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dynamicid_rt import Request, RequestError, Result, format_parameters, parse_parameters
from dynamicid_rt.formats.infotext import MAX_FIELDS, MAX_TEXT_CHARS, read_fields, read_infotext

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# A1111 (modules/infotext_utils.py, 1.x): the field regex and the line rules, as a reference.
A1111_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_unquote(value: str) -> str:
    if len(value) == 0 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)
    except Exception:
        return value


def a1111_read(text: str) -> tuple[str, str, dict[str, str]]:
    """What A1111 reads: prompt, negative prompt and fields (later fields replace the prompts)."""
    *lines, last = text.strip().split("\n")
    if len(A1111_FIELD.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    fields = {}
    for key, value in A1111_FIELD.findall(last):
        fields[key.strip()] = a1111_unquote(value.strip()) if value.strip() else ""
    return prompt, negative, fields


# Texts built from the characters that matter to the reader: key characters, separators, quotes,
# backslashes, newlines, odd whitespace.
infotext_chars = st.lists(st.sampled_from(list('ab1_ -/:,"\\\n\t\u3000é') + ["Negative prompt:", "Steps: 2"]), max_size=40).map("".join)


@FUZZ
@given(infotext_chars)
@example('a: "x, b: "y", c: 1, d: 2')
@example('k: "a\\"b", j: 1, l: 2')
@example(' -ab: 1, c: 2, d: 3')
@example("p\nab: 1, ab: 2, ab: 3")  # three fields with one key still make the fields line
@example('p\n\nNegative prompt:\n\nx\nNegative prompt: y\nA: 1, B: 2, C: 3')
def test_reads_like_a1111(text):
    info = read_infotext(text)
    prompt, negative, fields = a1111_read(text)
    assert (info.prompt, info.negative_prompt) == (prompt, negative)
    assert {k: v.strip() for k, v in info.fields.items()} == {k: v.strip() for k, v in fields.items()}


def _result(prompt: str, negative: str) -> Result:
    request = Request(prompt=prompt, negative_prompt=negative, steps=7, seed=3, guidance=6.5)
    return Result(images=[None], request=request, seeds=[3], sampler="euler", gating=False, backend="onnxruntime")


prompts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=80) | st.lists(
    st.sampled_from(["Negative prompt:", "Negative prompt: evil", "Steps: 999", ", Seed: 1", "\n", " ", '"', "\\", "a, b: c",
                     "<lora:detail:0.8>", "Prompt: x", "\r", "\u2028", "é"]), max_size=8).map("".join)


@FUZZ
@given(prompts, prompts)
@example("a cat\nNegative prompt: evil\nSteps: 999", "")
@example("Negative prompt: x", "y\nNegative prompt: z")
@example("  padded  ", "\n")
def test_any_prompt_round_trips_and_a1111_reads_it_exactly(prompt, negative):
    text = format_parameters(_result(prompt, negative))
    parsed = parse_parameters(text)
    assert (parsed["prompt"], parsed["negative_prompt"]) == (prompt, negative)
    assert (parsed["steps"], parsed["seed"], parsed["guidance"], parsed["sampler"]) == (7, 3, 6.5, "euler")
    a1111_prompt, a1111_negative, fields = a1111_read(text)
    # A1111's fields of the last line replace what it read from the lines.
    assert fields.get("Prompt", a1111_prompt) == prompt and fields.get("Negative prompt", a1111_negative) == negative
    assert fields["Steps"] == "7"


def test_field_lookalikes_in_the_prompt_do_not_change_the_settings():
    text = format_parameters(_result("a cat\nNegative prompt: evil\nSteps: 999", ""))
    assert "\nNegative prompt: evil" not in text  # other readers see no negative prompt either
    parsed = parse_parameters(text)
    assert parsed["steps"] == 7 and parsed["negative_prompt"] == ""


def test_plain_prompts_are_written_as_a1111_writes_them():
    text = format_parameters(_result("a cat, photo\nsecond line", "ugly"))
    assert text.startswith("a cat, photo\nsecond line\nNegative prompt: ugly\nSteps: 7, ")
    assert "Prompt:" not in text  # the exact fields only when the lines cannot hold the text


def test_lora_hashes_round_trip_and_lora_tags_stay_in_the_prompt():
    prompt = "a portrait <lora:add_detail:0.8>, <lora:film grain:1>"
    text = format_parameters(_result(prompt, ""), lora_hashes={"add_detail": "7c6bad76eb54", "film grain": "1d2b3c4e5f60"})
    assert 'Lora hashes: "add_detail: 7c6bad76eb54, film grain: 1d2b3c4e5f60"' in text  # A1111 1.10's form
    parsed = parse_parameters(text)
    assert parsed["prompt"] == prompt
    assert parsed["lora_hashes"] == {"add_detail": "7c6bad76eb54", "film grain": "1d2b3c4e5f60"}
    with pytest.raises(RequestError, match="LoRA hash"):
        format_parameters(_result(prompt, ""), lora_hashes={"x": "not hex!"})


@pytest.mark.parametrize("tail, field", [
    ("Steps: abc, Seed: 1, CFG scale: 7", "Steps"),
    ("Steps: 1, Seed: 99999999999999999999999999, CFG scale: 7", "Seed"),
    ("Steps: 1, Seed: 1, CFG scale: nan", "CFG scale"),
    ("Steps: 1, Seed: 1, Size: 12x, CFG scale: 7", "Size"),
    ('Steps: 1, Seed: 1, Face prompts: "[\\q]", CFG scale: 7', "Face prompts"),  # a bad escape
    ('Steps: 1, Seed: 1, People: "' + "[" * 5000 + '", CFG scale: 7', "People"),  # nested too deep
    ('Steps: 1, Seed: 1, People: "[1, 2]", CFG scale: 7', "People"),
    ("Steps: 1, Seed: 1, ID boxes: 0;1, CFG scale: 7", "ID boxes"),
    ("Steps: 1, Seed: 1, Lora hashes: nohash, CFG scale: 7", "Lora hashes"),
])
def test_a_value_that_does_not_read_is_kept_as_text(tail, field):
    parsed = parse_parameters(f"a cat\n{tail}")
    assert field in parsed["extra"] and parsed["prompt"] == "a cat"


@pytest.mark.parametrize("text", [None, b"a cat", 12, ["a"]])
def test_parameters_that_are_not_text_are_refused(text):
    with pytest.raises(RequestError, match="must be text"):
        parse_parameters(text)


def test_caps_refuse_what_no_writer_makes():
    with pytest.raises(RequestError, match="characters long"):
        parse_parameters("a" * (MAX_TEXT_CHARS + 1))
    with pytest.raises(RequestError, match="fields"):
        read_fields("ab: 1, " * (MAX_FIELDS + 1))


def test_quoted_values_that_never_close_are_scanned_once():
    # Each unterminated quote would make a backtracking reader rescan to the end of the line.
    line = "Steps: 2, " + 'ab: "x, ' * 900
    fields = dict(read_fields(line))
    assert fields["Steps"] == "2" and fields["ab"] == '"x'
