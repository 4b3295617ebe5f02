"""Tags in streamed text (``<think>``, ``<tool_call>``): text arrives cut anywhere, so a reader
holds back the end of what it has whenever that end may be the start of a tag."""


def partial_tag(text, tag):
    """Length of the longest proper prefix of ``tag`` that ``text`` ends with."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
