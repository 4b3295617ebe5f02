"""Following a generation's numbered events (inference.publish numbers them per message)."""

# A gap (a lost batch of events) is filled from the saved row, which the worker writes at least
# once a second: it is read again every RESYNC_WAIT seconds until it reaches the gap, at most
# RESYNC_TRIES times.
RESYNC_TRIES = 20
RESYNC_WAIT = 0.2
