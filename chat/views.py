from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render

from inference.models import get_model

from .models import Conversation
from .rendering import thread_context


@login_required
def index(request):
    conv = Conversation.objects.filter(owner=request.user).first()
    if conv is None:
        conv = Conversation.objects.create(owner=request.user, model=get_model().name)
    return redirect("chat:conversation", pk=conv.pk)


@login_required
def conversation(request, pk):
    conv = get_object_or_404(Conversation, pk=pk, owner=request.user)
    return render(request, "chat/conversation.html", thread_context(conv))
