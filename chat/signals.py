"""Signals between the apps above chat (docs/architecture.md, Layers), kept here because each of
them may import chat and none may import the other; chat itself never imports them."""
from django.dispatch import Signal

# Sent (sender: the user model, user=...) before an account's rows are deleted (accounts.deletion):
# apps stop what they run for it (batches.apps connects the cancelling of its batches).
account_closing = Signal()
