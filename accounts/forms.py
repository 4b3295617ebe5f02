"""The account pages' forms: sign-up, sign-in (the site's and the admin's, throttled), a new API
key, and the confirmation of an account's deletion."""
from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from .login_throttle import LoginAttempt, Throttled, ThrottledLoginMixin


class SignupForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        fields = ("username",)


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    throttle_action = "admin_login"


class KeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. “laptop scripts”.")
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650, label="Expires in (days)",
                                         help_text="Empty: never expires.")


class DeleteAccountForm(forms.Form):
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
                               label="Your password", help_text="To confirm it is you.")
    confirm = forms.BooleanField(label="I understand that my chats, API keys, batches and usage records are "
                                       "deleted for good.")

    throttled = None

    def __init__(self, user, request, *args, **kwargs):
        self.user, self.request = user, request
        super().__init__(*args, **kwargs)

    def clean_password(self):
        # A password check like a sign-in's, so throttled like one: a borrowed session must not
        # become a way to guess the password without limit.
        password = self.cleaned_data["password"]
        attempt = LoginAttempt(self.request, self.user.get_username(), "delete_account")
        try:
            attempt.begin()
        except Throttled as exc:
            self.throttled = exc
            raise forms.ValidationError(str(exc)) from None
        if not self.user.check_password(password):
            raise forms.ValidationError("That is not your password.")
        attempt.clear()
        return password

    def clean(self):
        cleaned = super().clean()
        others = get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(pk=self.user.pk)
        if self.user.is_superuser and not others.exists():
            raise forms.ValidationError("You are the only administrator: make someone else an administrator "
                                        "(in /admin/) before deleting your account.")
        return cleaned
