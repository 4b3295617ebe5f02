"""Which upstream answers a request: of those serving the model whose breaker is closed and who are
below their max_concurrency, the one with the fewest requests in flight (ties: the one that has
waited longest since its last request), never a random choice. When all are full the request
waits in line, first come first served, and its tabs see how many are ahead of it.

In flight is counted per process (the process that runs the upstream worker); scaled out with
several upstream workers each keeps its own share of max_concurrency."""
import itertools
import threading
import time


class Balancer:
    def __init__(self):
        self._cond = threading.Condition()
        self._in_flight = {}  # upstream name -> requests running
        self._last = {}  # upstream name -> when it was last given a request
        self._line = []  # tickets waiting, oldest first
        self._tickets = itertools.count()

    def in_flight(self, name):
        with self._cond:
            return self._in_flight.get(name, 0)

    def _pick(self, candidates):
        free = [u for u in candidates if self._in_flight.get(u.name, 0) < u.max_concurrency]
        if not free:
            return None
        return min(free, key=lambda u: (self._in_flight.get(u.name, 0), self._last.get(u.name, 0.0), u.name))

    def acquire(self, candidates_fn, should_stop):
        """A generator: yields the number of requests ahead while it waits, then returns the chosen
        upstream (``StopIteration.value``), or None when stopped or no upstream is left."""
        ticket = next(self._tickets)
        told = None
        with self._cond:
            self._line.append(ticket)
        try:
            while True:
                candidates = candidates_fn()
                if not candidates:
                    return None
                with self._cond:
                    ahead = self._line.index(ticket)
                    chosen = self._pick(candidates) if ahead == 0 else None
                    if chosen is not None:
                        self._in_flight[chosen.name] = self._in_flight.get(chosen.name, 0) + 1
                        self._last[chosen.name] = time.monotonic()
                        return chosen
                if should_stop():
                    return None
                if ahead != told:
                    told = ahead
                    yield ahead
                with self._cond:
                    self._cond.wait(0.25)
        finally:
            with self._cond:
                self._line.remove(ticket)
                self._cond.notify_all()

    def release(self, name):
        with self._cond:
            self._in_flight[name] = max(0, self._in_flight.get(name, 0) - 1)
            self._cond.notify_all()


_balancer = Balancer()


def get_balancer():
    return _balancer
