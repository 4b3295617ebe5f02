from django import forms


class ReasonForm(forms.Form):
    reason = forms.CharField(
        min_length=5, max_length=1000, strip=True,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why you need to read this conversation (kept in the audit log with your name).")
