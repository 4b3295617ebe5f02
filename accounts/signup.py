"""Sign-up, and who becomes the administrator: the first account on a fresh install
(SMOLSITE_ADMIN_BOOTSTRAP=signup, the default), or only accounts made with `createsuperuser`
(SMOLSITE_ADMIN_BOOTSTRAP=createsuperuser: sign-up stays closed until an administrator exists)."""
from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.db import IntegrityError, connection, transaction
from django.shortcuts import redirect, render

from .forms import SignupForm
from .login_throttle import signup_refusal

# Any constant: the key of the PostgreSQL advisory lock first sign-ups take turns on.
PROMOTION_LOCK = 0x5350_4C41  # "SPLA"


def lock_promotion():
    """Serialise sign-ups for the rest of the transaction, so two concurrent first sign-ups cannot
    both see an empty table. PostgreSQL: a transaction-scoped advisory lock (READ COMMITTED then
    lets the second see the first's committed row). SQLite: transactions are IMMEDIATE
    (settings), so the write lock is already held from BEGIN."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PROMOTION_LOCK])


def promote_if_first(user):
    """Make ``user`` staff and superuser when no other account exists. Call inside the transaction
    that created ``user``, after ``lock_promotion()``."""
    User = get_user_model()
    if not User.objects.exclude(pk=user.pk).exists():
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    return user


def signup_open():
    if not settings.SMOLSITE_SIGNUP_OPEN:
        return False
    if settings.SMOLSITE_ADMIN_BOOTSTRAP == "createsuperuser":
        return get_user_model().objects.filter(is_superuser=True, is_active=True).exists()
    return True


def signup(request):
    if not signup_open():
        return render(request, "registration/signup_closed.html",
                      {"needs_admin": settings.SMOLSITE_SIGNUP_OPEN}, status=403)
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and (throttled := signup_refusal(request, increment=False)) is not None:
        return _signup_refused(request, form, throttled)
    if request.method == "POST" and form.is_valid():
        if (throttled := signup_refusal(request, increment=True)) is not None:
            return _signup_refused(request, form, throttled)
        try:
            with transaction.atomic():
                lock_promotion()
                user = form.save()
                if settings.SMOLSITE_ADMIN_BOOTSTRAP == "signup":
                    promote_if_first(user)
        except IntegrityError:  # the same username signed up a moment ago
            form.add_error("username", "A user with that username already exists.")
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


def _signup_refused(request, form, throttled):
    response = render(request, "registration/signup.html", {"form": form, "throttled": str(throttled)}, status=429)
    response["Retry-After"] = str(throttled.retry_after)
    return response
