"""The transcript page and the reason gate in front of it; mounted under the conversation admin
(review/chat_admin.py), so they are admin pages (staff login) with their own permission on top."""
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode

from chat.models import Conversation

from . import access
from .forms import ReasonForm
from .models import AuditRecord
from .transcript import Tree, transcript_items

MAX_ID = 2**63 - 1  # larger ids cannot exist and would overflow the database's integer


def _conversation(model_admin, request, object_id):
    # Both: review.view_transcript, and seeing conversations in the admin at all.
    if not (access.may_review(request.user) and model_admin.has_view_permission(request)):
        raise PermissionDenied("Reading transcripts needs the review.view_transcript permission.")
    if object_id > MAX_ID:
        raise Http404("No such conversation.")
    conv = Conversation.objects.select_related("owner").filter(pk=object_id).first()
    if conv is None:
        raise Http404("No such conversation.")
    return conv


def _leaf_param(request):
    raw = request.GET.get("leaf", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise Http404("The leaf parameter must be the id of a message in this conversation.")
    return int(raw)


def _transcript_url(conv, leaf_id=None):
    url = reverse("admin:chat_conversation_transcript", args=[conv.pk])
    return url + ("?" + urlencode({"leaf": leaf_id}) if leaf_id else "")


def transcript(request, model_admin, object_id):
    conv = _conversation(model_admin, request, object_id)
    tree = Tree(conv)
    leaf_id = _leaf_param(request)
    if leaf_id is not None and leaf_id not in tree.by_id:
        raise Http404("No such message in this conversation.")
    with_text = access.may_read_text(request.user)
    reason = None
    if with_text:
        reason = access.reason_for(request, conv.pk)
        if not reason:
            url = reverse("admin:chat_conversation_reason", args=[conv.pk])
            return HttpResponseRedirect(url + ("?" + urlencode({"leaf": leaf_id}) if leaf_id else ""))
    leaf = tree.leaf_for(leaf_id)
    if with_text:
        access.audit(request, AuditRecord.Action.VIEW, conv, reason=reason, with_text=True,
                     detail=f"branch ending at message {leaf.id}" if leaf else "")
    leaves = tree.leaves()
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": f"Transcript of conversation #{conv.pk}",
        "subtitle": None,
        "conv": conv,
        "conv_title": conv.title if with_text else access.conversation_label(conv),
        "with_text": with_text,
        "hidden": access.HIDDEN,
        "reason": reason,
        "items": transcript_items(tree, leaf, with_text),
        "leaf": leaf,
        "branches": [{"number": i + 1, "leaf": m.id, "current": leaf is not None and m.id == leaf.id,
                      "turns": len(tree.path(m))} for i, m in enumerate(leaves)],
        "message_count": len(tree.messages),
    }
    return render(request, "review/transcript.html", context)


def reason(request, model_admin, object_id):
    conv = _conversation(model_admin, request, object_id)
    leaf_id = _leaf_param(request)
    if not access.text_readable():
        return HttpResponseRedirect(_transcript_url(conv, leaf_id))  # nothing to unlock
    form = ReasonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        access.give_reason(request, [conv.pk], form.cleaned_data["reason"])
        return HttpResponseRedirect(_transcript_url(conv, leaf_id))
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": f"Why do you need to read conversation #{conv.pk}?",
        "conv": conv,
        "form": form,
        "conversations": [conv],
    }
    return render(request, "review/reason.html", context)
