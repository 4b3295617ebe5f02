"""Message.options typed (chat.generation_options.GenerationOptions): what is set round-trips, keys
this version does not know are kept, and an API request's sampling settings are written with each
answer where the job store reads them, over the conversation's."""
import pytest
from django.contrib.auth import get_user_model

from api import params
from api.models import ApiKey
from api.runner import create_rows
from chat.generation_options import GenerationOptions
from chat.models import Conversation, Message
from chat.store import MessageStore

MODEL = "smollm2-135m"


def test_only_what_is_set_is_written_and_unknown_keys_are_kept():
    assert GenerationOptions().to_dict() == {}
    assert GenerationOptions(tool_round=0, grammar_waits_for_call=False).to_dict() == {
        "grammar_waits_for_call": False, "tool_round": 0}
    old = {"source": "api", "seed": 7, "from_a_later_version": {"x": 1}, "extra": "mine"}
    options = GenerationOptions.from_dict(old)
    assert (options.source, options.seed, options.temperature) == ("api", 7, None)
    assert options.extra == {"from_a_later_version": {"x": 1}, "extra": "mine"}
    options.tool_note = "a note"
    assert options.to_dict() == {**old, "tool_note": "a note"}
    assert GenerationOptions.from_dict(None) == GenerationOptions()


@pytest.mark.django_db
def test_an_api_answer_holds_its_sampling_settings_and_the_worker_reads_them():
    user = get_user_model().objects.create_user("ann", password="pw-123456789")
    key, _ = ApiKey.create_for(user, "ann's key")
    plan = params.check_plan(params.parse_chat({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                "temperature": 0.2, "top_p": 0.5, "seed": 3, "user": "u-1"}))
    conversation_id, (reply,) = create_rows(plan, key)
    options = Message.objects.get(pk=reply).generation_options
    assert (options.temperature, options.top_p, options.seed, options.source, options.user) == (
        0.2, 0.5, 3, "api", "u-1")
    # The conversation's settings change (say, in the browser): the request's own still apply.
    Conversation.objects.filter(pk=conversation_id).update(temperature=1.5, top_p=0.9)
    request = MessageStore().claim(str(reply), "cpu@test:1")
    assert (request.params.temperature, request.params.top_p, request.params.seed) == (0.2, 0.5, 3)
