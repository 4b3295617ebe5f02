"""Shared pieces of the fuzz tests (tests/test_fuzz_*.py): hypothesis profiles and strategies.

SMOLSITE_FUZZ picks the profile: ``ci`` (the default: a few dozen examples a test, so the suite
stays short) or ``long`` (thousands, for a local run: ``SMOLSITE_FUZZ=long make test``)."""
import json
import os

from hypothesis import HealthCheck, settings, strategies as st

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=2000)
PROFILE = os.environ.get("SMOLSITE_FUZZ", "ci")
fuzz = settings(settings.get_profile(PROFILE))  # a decorator: @fuzz above @given


def scaled(examples):
    """A test's own example count, scaled up the same way under the long profile."""
    return settings(fuzz, max_examples=examples if PROFILE == "ci" else examples * 50)


# JSON values of every type, odd numbers and odd text included.
odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "a\x00b", "²", "١٢", "9" * 40, "-1", "0", "1e400", "NaN", "null", "[]", "{}",
                     "<script>alert(1)</script>", "\"'><img src=x onerror=alert(1)>", "../../etc/passwd",
                     "\r\n", "a\nb", "\ud7ff\ue000", "😀" * 10, "%00", "%s%n", "{{7*7}}"]),
)
odd_numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 64, 10 ** 30, 10 ** 400]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), odd_numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=12)


def dumps(value):
    """JSON as a client would send it (Python's json writes NaN and 10**400 too: servers see them)."""
    return json.dumps(value)
