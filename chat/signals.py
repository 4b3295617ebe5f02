"""Signals chat sends for the apps above it (docs/architecture.md, Layers): chat never imports them."""
from django.dispatch import Signal

# Sent (sender: the user model, user=...) before an account's rows are deleted (chat.account_data):
# apps stop what they run for it (batches.apps connects the cancelling of its batches).
account_closing = Signal()
