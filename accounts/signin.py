"""Sign-in, the site's and Django admin's, with failed attempts throttled (accounts.login_throttle)
and a 429 with Retry-After when the throttle refuses."""
from django.contrib import admin
from django.contrib.auth import views as auth_views

from .forms import AdminLoginForm, LoginForm
from .login_throttle import with_retry_after
from .signup import signup_open


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True
    authentication_form = LoginForm

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "signup_open": signup_open()}

    def form_invalid(self, form):
        return with_retry_after(super().form_invalid(form), form)


class ThrottledAdminSite(admin.AdminSite):
    """The admin site (settings: smolsite.admin_app), its sign-in throttled like the site's, with
    the same 429 when the throttle refuses."""
    login_form = AdminLoginForm

    def login(self, request, extra_context=None):
        response = super().login(request, extra_context)
        return with_retry_after(response, (getattr(response, "context_data", None) or {}).get("form"))
