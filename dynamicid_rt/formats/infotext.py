"""AUTOMATIC1111's "infotext" (the PNG ``parameters`` text) read as A1111 reads it, in linear time.

A1111 splits the text into prompt lines, negative-prompt lines (from the first line that starts
with "Negative prompt:") and a last line of ``key: value`` fields, found with the regex
``\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)``. That regex, run with
``findall``, backtracks: long runs of spaces or key characters without a colon cost quadratic
time or worse (16,000 spaces: seconds). Here the same fields are found by scanning forward only:

- a key can only start where a run of key characters starts (every later start in the run fails
  exactly where the first one does), so the key search is one regex whose lookbehind pins it there;
- the quoted form of a value is tried at most once per stretch of text: a quote inside a stretch
  already scanned is an escaped one, and scanning from it ends where the earlier scan ended.

What is read is capped (:data:`MAX_TEXT_CHARS`, :data:`MAX_FIELDS_LINE`, :data:`MAX_FIELDS`); beyond the caps the text is
refused with a :class:`~dynamicid_rt.errors.RequestError`, never parsed slowly.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import RequestError

# Pillow's own cap on one PNG text chunk (PngImagePlugin.MAX_TEXT_CHUNK) is 1 MB; nothing longer
# can come from an image, and a real prompt is a few kB.
MAX_TEXT_CHARS = 1 << 20
MAX_FIELDS = 1024  # A1111 with many extensions writes about a hundred
# The last line (the fields) is the only one scanned key by key; A1111's are a few kB, ours hold
# the exact prompts at most (request.MAX_PROMPT_CHARS each, JSON-escaped).
MAX_FIELDS_LINE = 256 << 10
NEGATIVE = "Negative prompt:"

_KEY_CHARS = r"[\w \-/]"
# A key starts at the first word character of a run of key characters and ends at the colon
# right after the run (A1111: two characters at least).
_KEY = re.compile(rf"(?<!{_KEY_CHARS})[ \-/]*(\w{_KEY_CHARS}+):")
_SPACES = re.compile(r"\s*")
# The "unrolled" quoted string: no two parts can match the same character, so it is linear.
_QUOTED = re.compile(r'"[^\\"]*(?:\\.[^\\"]*)*"')
_NEGATIVE_LINE = re.compile(rf"^[^\S\n]*{NEGATIVE}", re.MULTILINE)
_NEGATIVE_PREFIX = re.compile(rf"^{NEGATIVE}[^\S\n]*", re.MULTILINE)  # on stripped lines: A1111's line[16:].strip()


@dataclass
class Infotext:
    """The three parts of an infotext, as A1111 reads them (values unquoted)."""

    prompt: str
    negative_prompt: str
    fields: dict[str, str] = field(default_factory=dict)


def quote(value: str, always: bool = False) -> str:
    """A field value as A1111 writes it: JSON-quoted when it holds a comma, colon, quote or newline."""
    if always or any(c in value for c in ',:"\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


def unquote(value: str) -> str:
    """A1111's unquote: a quoted value is read as JSON; one that does not parse stays as it is."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        text = json.loads(value)
    except ValueError:  # a bad escape: A1111 keeps the text
        return value
    return text if isinstance(text, str) else value


def checked_text(text: object) -> str:
    if not isinstance(text, str):
        raise RequestError(f"image parameters must be text (str), not {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(
            f"image parameters are {len(text)} characters long, more than the {MAX_TEXT_CHARS} read here; "
            "they are not parameters AUTOMATIC1111 or dynamicid-rt wrote"
        )
    return text


def read_infotext(text: str) -> Infotext:
    """Prompt, negative prompt and the last line's fields of ``text``, as A1111 reads them."""
    lines = checked_text(text).strip().split("\n")
    if len(lines[-1]) > MAX_FIELDS_LINE:
        raise RequestError(
            f"the last line of the image parameters is {len(lines[-1])} characters long, more than the {MAX_FIELDS_LINE} "
            "read here; they are not parameters A1111 or dynamicid-rt wrote"
        )
    pairs = read_fields(lines[-1])
    if len(pairs) >= 3:  # A1111's rule: the last line holds the fields when it has three or more
        lines.pop()
    else:
        pairs = []
    prompt, negative = split_prompt_lines("\n".join(lines))
    return Infotext(prompt, negative, dict(pairs))  # a key given twice: the later value, as in A1111


def split_prompt_lines(text: str) -> tuple[str, str]:
    """A1111's reading of the lines above the fields: each line stripped; from the first line
    starting with "Negative prompt:" on, lines are the negative prompt (that prefix dropped from
    each); empty lines before the first text of each part are dropped."""
    found = _NEGATIVE_LINE.search(text)
    if found is None:
        head, tail = text, ""
    else:  # the line break before the negative prompt's first line separates, it is no prompt line
        head, tail = (text[: found.start() - 1] if found.start() else None), text[found.start():]
    # map(str.strip): the per-line work stays in C (a hostile text has a million lines).
    prompt = "\n".join(map(str.strip, head.split("\n"))).lstrip("\n") if head is not None else ""
    negative = _NEGATIVE_PREFIX.sub("", "\n".join(map(str.strip, tail.split("\n")))).lstrip("\n") if tail else ""
    return prompt, negative


def read_fields(line: str) -> list[tuple[str, str]]:
    """The ``key: value`` fields of one line, in order, as A1111's regex finds them."""
    fields: list[tuple[str, str]] = []
    pos, end, count = 0, len(line), 0
    scanned_from, scanned_to = -1, -1  # the last quoted scan: from its opening quote to where it ended
    while pos < end:
        key = _KEY.search(line, pos)
        if key is None:
            break
        count += 1
        if count > MAX_FIELDS:
            raise RequestError(f"image parameters hold more than {MAX_FIELDS} fields; they are not parameters A1111 wrote")
        start = _SPACES.match(line, key.end()).end()
        stop = -1
        if start < end and line[start] == '"':
            if not scanned_from < start < scanned_to:  # inside the last scan: it ends the same way
                quoted = _QUOTED.match(line, start)
                scanned_from, scanned_to = start, quoted.end() - 1 if quoted else end
                # A1111 wants one character at least inside the quotes, then a comma or the end.
                if quoted and quoted.end() - start > 2 and (quoted.end() == end or line[quoted.end()] == ","):
                    stop = quoted.end()
        if stop < 0:
            comma = line.find(",", start)
            stop = end if comma < 0 else comma
        fields.append((key.group(1).strip(), unquote(line[start:stop].strip())))
        pos = stop + 1
    return fields


def a1111_lines(prompt: str, negative_prompt: str) -> str:
    """The prompt lines of an infotext: ``prompt``, then "Negative prompt: ..." when there is one.

    A line of the prompt (or of the negative prompt after its first) that starts with "Negative
    prompt:" would be read as the start (or the prefix) of the negative prompt; it is written with
    "Negative prompt;" instead, and the exact texts go into fields (see
    :func:`exact_prompt_fields`)."""
    def shown(text: str, first_as_is: bool) -> str:
        return "\n".join(
            line.replace(NEGATIVE, "Negative prompt;", 1)
            if line.lstrip().startswith(NEGATIVE) and not (first_as_is and i == 0) else line
            for i, line in enumerate(text.split("\n"))
        )

    lines = shown(prompt, first_as_is=False)
    if negative_prompt:
        lines += f"\n{NEGATIVE} {shown(negative_prompt, first_as_is=True)}"
    return lines


def exact_prompt_fields(prompt: str, negative_prompt: str, lines: str) -> list[tuple[str, str]]:
    """"Prompt" and "Negative prompt" fields, JSON-quoted, for the texts that ``lines`` does not
    give back exactly (whitespace A1111 strips, "Negative prompt:" lines). A1111 reads fields of the
    last line after the prompt lines, so these replace what it read from the lines."""
    read_prompt, read_negative = split_prompt_lines(lines.strip())
    out = []
    if read_prompt != prompt:
        out.append(("Prompt", quote(prompt, always=True)))
    if read_negative != negative_prompt:
        out.append(("Negative prompt", quote(negative_prompt, always=True)))
    return out
