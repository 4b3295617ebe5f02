"""One door for a generation: an assistant Message answered by a device worker."""
