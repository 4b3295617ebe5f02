"""Sign-up, and who becomes the administrator: the first account on a fresh install."""
from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.db import transaction
from django.shortcuts import redirect, render

from .forms import SignupForm


def promote_if_first(user):
    """Make ``user`` staff and superuser when no other account exists."""
    User = get_user_model()
    if not User.objects.exclude(pk=user.pk).exists():
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    return user


def signup(request):
    if not settings.SMOLSITE_SIGNUP_OPEN:
        return render(request, "registration/signup_closed.html", status=403)
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            user = promote_if_first(form.save())
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "signup_open": settings.SMOLSITE_SIGNUP_OPEN}
