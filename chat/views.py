"""The chat pages. Full pages for normal requests, fragments for htmx requests; every lookup
is scoped to the signed-in user, so another user's conversation id answers 404."""
from urllib.parse import urlencode, urlsplit

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from inference import dispatch
from inference.model_configs import UnknownModel, all_models, get_model
from inference.workers import alive_workers

from . import actions, limits
from .forms import ModelForm, RenameForm, SettingsForm
from .models import Conversation, Message, ToolCall
from .rendering import conversation_features, thread_context
from .sidebar import clean_query, sidebar_context


MAX_ID = 2 ** 63 - 1


def parse_id(value):
    """A database id from request data, or None: ASCII digits only ("²" is a digit to
    str.isdigit() but not to int()), within a bigint."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    number = int(value)
    return number if 0 < number <= MAX_ID else None


def _own(request, pk):
    return get_object_or_404(Conversation, pk=pk, owner=request.user)


def _model_for_new_chat(user):
    """The model of the user's latest chat, so picking a model sticks across new chats."""
    latest = Conversation.objects.filter(owner=user).exclude(source="batch").order_by("-updated_at").values_list("model", flat=True).first()
    try:
        return get_model(latest).name
    except UnknownModel:
        return get_model().name


def _settings_context(conv, form=None, saved=False):
    features = conversation_features(conv)
    try:
        model = get_model(conv.model)
    except UnknownModel:
        model = None
    return {"conversation": conv, "features": features, "model_config": model, "saved": saved,
            "settings_form": form or SettingsForm(instance=conv, features=features)}


@login_required
def index(request):
    conv = Conversation.objects.filter(owner=request.user).exclude(source="batch").order_by("-updated_at").first()
    if conv is None:
        conv = Conversation.objects.create(owner=request.user, model=_model_for_new_chat(request.user))
    return redirect("chat:conversation", pk=conv.pk)


@login_required
@require_POST
def new_chat(request):
    """An empty chat is reused rather than piling up untouched ones."""
    conv = Conversation.objects.filter(owner=request.user, source="chat", messages__isnull=True) \
        .order_by("-updated_at").first()
    if conv is None:
        try:
            limits.check_new_chat(request.user)  # SMOLSITE_MAX_CHATS_PER_USER
        except limits.LimitExceeded as exc:
            return HttpResponse(str(exc), status=429, content_type="text/plain; charset=utf-8")
        conv = Conversation.objects.create(owner=request.user, model=_model_for_new_chat(request.user))
    else:
        conv.touch()
    return redirect("chat:conversation", pk=conv.pk)


@login_required
@require_GET
def conversation(request, pk):
    conv = _own(request, pk)
    query = request.GET.get("q", "")
    context = {
        **thread_context(conv),
        **sidebar_context(request.user, query, current=conv),
        **_settings_context(conv),
        "models": all_models(),
        "model_unavailable": _unavailable(conv.model),
    }
    return render(request, "chat/conversation.html", context)


def _unavailable(model_name):
    """What to tell the user when no live device worker holds the chat's model (a missing or corrupt
    model file, no worker started): otherwise they would send and wait for an answer that cannot come."""
    workers = alive_workers()
    served = {name for worker in workers for name in worker.get("models", [])}
    if model_name in served:
        return ""
    if any(model_name in (worker.get("unavailable") or {}) for worker in workers):
        # A plugin's worker is up but cannot serve it now (its upstream server is down): it comes
        # back by itself when the server answers again.
        return (f"The model {model_name} is unavailable right now: the server that runs it is not answering. "
                "Answers will fail until it is back; try again in a moment or pick another model.")
    return (f"The model {model_name} is unavailable right now: no device worker has it loaded. "
            "Answers will fail until an administrator fixes it (see /readyz).")


@login_required
@require_GET
def thread(request, pk):
    conv = _own(request, pk)
    return render(request, "chat/_thread.html", thread_context(conv))


@login_required
@require_GET
def conversation_list(request):
    query = clean_query(request.GET.get("q", ""))
    current = parse_id(request.GET.get("current"))
    if not request.htmx:
        target = Conversation.objects.filter(owner=request.user, pk=current).first() if current else None
        url = reverse("chat:conversation", args=[target.pk]) if target else reverse("chat:index")
        return redirect(f"{url}?{urlencode({'q': query})}" if query and target else url)
    context = sidebar_context(request.user, query, current=current)
    return render(request, "chat/_conversation_list.html", context)


@login_required
@require_GET
def conversation_item(request, pk):
    conv = _own(request, pk)
    return render(request, "chat/_conversation_item.html",
                  {"entry": {"conversation": conv, "snippet": ""}, "current_id": _current_id(request)})


def _current_id(request):
    """The conversation the htmx request came from (from HX-Current-URL), if any."""
    if not request.htmx or not request.htmx.current_url:
        return None
    try:
        match = resolve(urlsplit(request.htmx.current_url).path)
    except Resolver404:
        return None
    return match.kwargs.get("pk") if match.view_name == "chat:conversation" else None


@login_required
def rename(request, pk):
    conv = _own(request, pk)
    form = RenameForm(request.POST or None, initial={"title": conv.title})
    if request.method == "POST":
        if form.is_valid():
            conv.title = form.cleaned_data["title"]
            conv.save(update_fields=["title"])
            if request.htmx:
                return render(request, "chat/_conversation_item.html",
                              {"entry": {"conversation": conv, "snippet": ""}, "current_id": _current_id(request)})
            return redirect("chat:conversation", pk=conv.pk)
        status = 422
    else:
        status = 200
    template = "chat/_rename_form.html" if request.htmx else "chat/rename.html"
    return render(request, template, {"conversation": conv, "form": form}, status=status)


@login_required
@require_POST
def delete(request, pk):
    conv = _own(request, pk)
    for message_id in conv.messages.filter(status__in=Message.ACTIVE).values_list("pk", flat=True):
        dispatch.stop(str(message_id))
    was_current = _current_id(request) == conv.pk
    conv.delete()
    if request.htmx:
        if was_current:
            return HttpResponseClientRedirect(reverse("chat:index"))
        # The item goes; the list redraws too, so an emptied day heading goes with it.
        return HttpResponse("", headers={"HX-Trigger": "conversations-changed"})
    return redirect("chat:index")


@login_required
@require_POST
def keep(request, pk):
    """Mark a chat kept (exempt from the retention policy) or not: ``kept`` is "1" or "0"."""
    conv = _own(request, pk)
    value = request.POST.get("kept")
    if value not in ("0", "1"):
        return HttpResponse("Say kept=1 or kept=0.", status=400, content_type="text/plain; charset=utf-8")
    conv.kept = value == "1"
    conv.save(update_fields=["kept"])
    if not request.htmx:
        return redirect("chat:conversation", pk=conv.pk)
    return render(request, "chat/_conversation_item.html",
                  {"entry": {"conversation": conv, "snippet": ""}, "current_id": _current_id(request)})


@login_required
@require_POST
def update_settings(request, pk):
    conv = _own(request, pk)
    features = conversation_features(conv)
    form = SettingsForm(request.POST, instance=conv, features=features)
    if form.is_valid():
        form.save()
        context, status = _settings_context(conv, saved=True), 200
    else:
        conv.refresh_from_db()
        context, status = _settings_context(conv, form=form), 422
    if not request.htmx and status == 200:
        return redirect("chat:conversation", pk=conv.pk)
    return render(request, "chat/_settings.html" if request.htmx else "chat/settings.html", context, status=status)


@login_required
@require_POST
def choose_model(request, pk):
    conv = _own(request, pk)
    form = ModelForm(request.POST)
    if not form.is_valid():
        return HttpResponse("That model is not configured on this server.", status=422,
                            content_type="text/plain; charset=utf-8")
    conv.model = form.cleaned_data["model"]
    conv.updated_at = timezone.now()
    conv.save(update_fields=["model", "updated_at"])
    if not request.htmx:
        return redirect("chat:conversation", pk=conv.pk)
    return render(request, "chat/_settings.html", _settings_context(conv))


@login_required
@require_POST
def branch(request, pk):
    conv = _own(request, pk)
    message_id = parse_id(request.POST.get("message", ""))
    if message_id is None:
        return HttpResponse("Choose a message to switch to.", status=400, content_type="text/plain; charset=utf-8")
    if actions.active_message(conv.pk) is not None:
        return HttpResponse("An answer is still being generated: wait for it or press Stop before switching versions.",
                            status=409, content_type="text/plain; charset=utf-8")
    if ToolCall.objects.filter(message__conversation_id=conv.pk, status__in=ToolCall.BUSY).exists():
        return HttpResponse("A tool call is still running or waiting for you: let it finish, or press Stop, before "
                            "switching versions.", status=409, content_type="text/plain; charset=utf-8")
    try:
        actions.switch_branch(conv.pk, message_id)
    except actions.ActionError as exc:
        return HttpResponse(str(exc), status=404, content_type="text/plain; charset=utf-8")
    if not request.htmx:
        return redirect("chat:conversation", pk=conv.pk)
    conv.refresh_from_db()
    return render(request, "chat/_thread.html", thread_context(conv))
