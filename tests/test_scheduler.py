"""The engine's admission order (plugins/llama_cpp/scheduler.py), without a model."""
import pytest

from plugins.llama_cpp.scheduler import Scheduler

pytestmark = pytest.mark.nodb


def drain(s, n):
    out = []
    for _ in range(n):
        picked = s.pop()
        if picked is None:
            break
        out.append(picked[0])
    return out


def test_interactive_before_background_and_users_in_turn():
    s = Scheduler(per_user=4)
    for i in range(3):
        s.add(f"batch{i}", "u1:batch", "background")
    s.add("a1", "alice")
    s.add("a2", "alice")
    s.add("b1", "bob")
    assert drain(s, 6) == ["a1", "b1", "a2", "batch0", "batch1", "batch2"]


def test_per_user_cap_holds_chats_but_not_background_lines():
    s = Scheduler(per_user=2)
    for i in range(5):
        s.add(f"line{i}", "alice:batch", "background")
    for i in range(3):
        s.add(f"chat{i}", "alice")
    # Two of alice's chats run; the third waits for one of them, but every batch line may run.
    assert drain(s, 10) == ["chat0", "chat1", "line0", "line1", "line2", "line3", "line4"]
    assert s.eligible("interactive") is False
    s.finished("alice:batch", "background")  # a line ending frees nothing of alice's chat cap
    assert s.eligible("interactive") is False
    s.finished("alice", "interactive")
    assert s.eligible("interactive") is True
    assert drain(s, 1) == ["chat2"]


def test_a_paused_background_line_goes_back_to_the_head_of_its_line():
    s = Scheduler(per_user=1)
    for i in range(3):
        s.add(f"line{i}", "u:batch", "background")
    first = drain(s, 1)[0]
    s.finished("u:batch", "background")
    s.add_front(first, "u:batch", "background")
    assert [item for item in s.order()] == ["line0", "line1", "line2"]
    assert drain(s, 3) == ["line0", "line1", "line2"]
