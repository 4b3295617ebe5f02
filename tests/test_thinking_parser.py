"""The <think> stream parser of the thinking plugin (plugins/thinking/parser.py).

The invariant, for any completion ``s`` and any way of cutting it into chunks:

* the pieces returned by ``feed``/``finish``, concatenated in order, equal ``s`` with the tags
  removed and nothing else removed, where "the tags" are: the opening ``<think>`` if ``s``
  starts with it after optional whitespace, and the first ``</think>`` after that opening tag
  (no other occurrence is a tag);
* every piece is non-empty, and its kind is "reasoning" for the characters before the closing
  tag plus the whitespace run right after it (all of the rest when there is no closing tag),
  "text" for everything after; so reasoning never follows text;
* the result does not depend on the chunking.

``split_reference`` below states that rule without streaming; the streaming parser must agree.
"""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.thinking.parser import CLOSE, OPEN, ThinkParser

pytestmark = pytest.mark.nodb


def split_reference(s):
    """(reasoning, answer) for a whole completion, following the rule above."""
    lead = len(s) - len(s.lstrip())
    if not s.startswith(OPEN, lead):
        return "", s
    body = s[lead + len(OPEN):]
    end = body.find(CLOSE)
    if end < 0:
        return s[:lead] + body, ""
    rest = body[end + len(CLOSE):]
    answer = rest.lstrip()
    return s[:lead] + body[:end] + rest[:len(rest) - len(answer)], answer


def remove_tags(s):
    """``s`` with exactly the recognised tags cut out (independent of split_reference)."""
    lead = len(s) - len(s.lstrip())
    if not s.startswith(OPEN, lead):
        return s
    s = s[:lead] + s[lead + len(OPEN):]
    end = s.find(CLOSE, lead)
    return s if end < 0 else s[:end] + s[end + len(CLOSE):]


def run(chunks):
    """Feed the chunks, then finish; returns every (kind, text) piece in order."""
    parser = ThinkParser()
    pieces = []
    for chunk in chunks:
        pieces.extend(parser.feed(chunk))
    pieces.extend(parser.finish())
    return pieces


def joined(pieces, kind=None):
    return "".join(text for k, text in pieces if kind is None or k == kind)


def merged(pieces):
    """Adjacent pieces of one kind joined (feed calls do not merge across calls)."""
    out = []
    for kind, text in pieces:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


def check(s, chunks):
    """Assert the invariant for one chunking; returns the pieces merged by kind."""
    assert "".join(chunks) == s
    pieces = run(chunks)
    assert all(kind in ("reasoning", "text") and text for kind, text in pieces), pieces
    kinds = [kind for kind, _ in pieces]
    assert kinds == sorted(kinds), f"reasoning after text: {kinds}"  # "reasoning" < "text"
    assert joined(pieces) == remove_tags(s)
    assert (joined(pieces, "reasoning"), joined(pieces, "text")) == split_reference(s)
    return merged(pieces)


def cut(s, points):
    points = sorted(set(points))
    return [s[a:b] for a, b in zip([0] + points, points + [len(s)])]


# ---- examples ----------------------------------------------------------------------------------

TYPICAL = "<think>\nThe user greets me. I greet back.\n</think>\n\nHello! How can I help?"


def test_typical_thinking_completion():
    pieces = check(TYPICAL, [TYPICAL])
    assert pieces == [("reasoning", "\nThe user greets me. I greet back.\n\n\n"),
                      ("text", "Hello! How can I help?")]


def test_answer_does_not_start_with_the_whitespace_after_the_closing_tag():
    for gap in ("\n\n", "\n", " \n \t", ""):
        pieces = run(["<think>x</think>", gap, "Answer"])
        assert joined(pieces, "text") == "Answer"
        assert joined(pieces, "reasoning") == "x" + gap


def test_every_single_cut_and_every_pair_of_cuts():
    n = len(TYPICAL)
    for points in itertools.chain(([i] for i in range(n + 1)), itertools.combinations(range(n + 1), 2)):
        check(TYPICAL, cut(TYPICAL, list(points)))


def test_one_character_at_a_time():
    check(TYPICAL, list(TYPICAL))


def test_tags_split_across_chunks():
    pieces = run(["<th", "ink>", "plan", "</", "thi", "nk>", "\n\n", "Ans", "wer"])
    assert joined(pieces, "reasoning") == "plan\n\n"
    assert joined(pieces, "text") == "Answer"


def test_answer_only_has_no_reasoning_and_streams_at_once():
    parser = ThinkParser()
    assert parser.feed("Hello") == [("text", "Hello")]
    assert parser.feed(" there") == [("text", " there")]
    assert parser.finish() == []


def test_unterminated_reasoning_is_all_reasoning():
    s = "<think>\nstill thinking when max_tokens hit"
    pieces = check(s, ["<think>\nstill ", "thinking when max_tokens hit"])
    assert pieces == [("reasoning", "\nstill thinking when max_tokens hit")]


def test_partial_closing_tag_at_the_end_is_flushed_by_finish_as_reasoning():
    parser = ThinkParser()
    assert parser.feed("<think>abc</thi") == [("reasoning", "abc")]
    assert parser.finish() == [("reasoning", "</thi")]


def test_partial_opening_tag_at_the_end_is_text():
    parser = ThinkParser()
    assert parser.feed("<thi") == []
    assert parser.finish() == [("text", "<thi")]


def test_held_back_look_alike_is_released_when_it_is_not_a_tag():
    parser = ThinkParser()
    assert parser.feed("<think>a</th") == [("reasoning", "a")]
    assert parser.feed("ought") == [("reasoning", "</thought")]
    parser = ThinkParser()
    assert parser.feed("<thi") == []
    assert parser.feed("s is not a tag") == [("text", "<this is not a tag")]


def test_long_reasoning_is_not_held_back():
    parser = ThinkParser()
    assert parser.feed("<think>") == []
    long = "step " * 500
    assert parser.feed(long) == [("reasoning", long)]


def test_stray_opening_tag_inside_the_answer_is_text():
    # What a no-think turn (the prompt already closed an empty think block) may produce.
    s = "Wrap it in <think> tags.</think> Done."
    check(s, list(s))
    assert run([s]) == [("text", s)]


def test_stray_opening_tag_at_the_start_is_reasoning():
    assert check("<think>oops</think>Answer", ["<think>oops</think>Answer"]) == [
        ("reasoning", "oops"), ("text", "Answer")]


def test_closing_tag_without_opening_tag_is_text():
    s = "a</think>b"
    assert run([s]) == [("text", s)]


def test_second_think_block_after_the_answer_is_text():
    pieces = check("<think>r</think>A <think>x</think> B", ["<think>r</think>A <think>x</think> B"])
    assert pieces == [("reasoning", "r"), ("text", "A <think>x</think> B")]


def test_whitespace_before_the_opening_tag_is_reasoning_not_answer():
    pieces = check("\n <think>r</think>\nA", ["\n", " <", "think>r</think>\nA"])
    assert pieces == [("reasoning", "\n r\n"), ("text", "A")]


def test_whitespace_only_completion_is_text():
    assert run(["\n", "\n "]) == [("text", "\n\n ")]


def test_empty_think_block_emitted_by_the_model():
    assert check("<think>\n\n</think>\nHi", ["<think>\n", "\n</think>\n", "Hi"]) == [
        ("reasoning", "\n\n\n"), ("text", "Hi")]


def test_empty_input_and_empty_chunks():
    assert run([]) == []
    assert run(["", "", ""]) == []
    check(TYPICAL, ["", TYPICAL[:5], "", TYPICAL[5:], ""])


# ---- properties -------------------------------------------------------------------------------

FRAGMENTS = ["<think>", "</think>", "<", "</", "<th", "<thi", "</thi", "think", "ink>", "nk>", ">", "/",
             "\n", "\n\n", " ", "\t", "a", "Answer", "é", "\U0001F642", "<think", "</think"]

completions = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=10).map(lambda parts: "<think>" + "".join(parts)),
    st.text(max_size=60),
)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), s=completions)
def test_any_text_any_chunking(data, s):
    points = data.draw(st.lists(st.integers(0, len(s)), max_size=12))
    chunks = cut(s, points)
    pieces = check(s, chunks)
    # The same pieces, merged by kind, whatever the chunking.
    assert pieces == merged(run([s])) == merged(run(list(s)))


@settings(max_examples=300, deadline=None)
@given(reasoning=st.text(max_size=40).filter(lambda r: CLOSE not in r),
       gap=st.text(alphabet=" \n\t", max_size=4),
       answer=st.text(max_size=40).filter(lambda a: not a[:1].isspace()),
       data=st.data())
def test_well_formed_completion_splits_into_its_parts(reasoning, gap, answer, data):
    s = OPEN + reasoning + CLOSE + gap + answer
    chunks = cut(s, data.draw(st.lists(st.integers(0, len(s)), max_size=8)))
    pieces = run(chunks)
    assert joined(pieces, "reasoning") == reasoning + gap
    assert joined(pieces, "text") == answer
