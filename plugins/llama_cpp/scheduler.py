"""Who is admitted to the batch next: interactive before background, users in turn (one
person with ten chats does not delay another's one), and at most ``per_user`` running
interactive generations per user. Background work (batch lines) has no per-user cap: it only
fills slots nobody else wants and is paused the moment a person needs one, so a batch may use
every idle slot and still never keeps its owner's own chats waiting. Also tells each waiting
request its position in line.

Not thread-safe: the engine calls it under its own lock."""
import collections

PRIORITIES = ("interactive", "background")


class Scheduler:
    def __init__(self, per_user=4):
        self.per_user = max(1, per_user)
        # priority -> user -> FIFO of waiting items; dict order is the round-robin order.
        self.waiting = {p: collections.OrderedDict() for p in PRIORITIES}
        self.running = collections.Counter()  # user -> running interactive count

    def __len__(self):
        return sum(len(q) for users in self.waiting.values() for q in users.values())

    def add(self, item, user, priority="interactive"):
        users = self.waiting[priority if priority in self.waiting else "interactive"]
        users.setdefault(user, collections.deque()).append((item, user))

    def add_front(self, item, user, priority):
        """Put a paused item back at the head of its user's line (it keeps its place)."""
        users = self.waiting[priority]
        users.setdefault(user, collections.deque()).appendleft((item, user))
        users.move_to_end(user, last=False)

    def eligible(self, priority):
        """Whether someone under their per-user cap waits in this priority class."""
        return any(self.running[user] < self.per_user for user in self.waiting[priority])

    def remove(self, item):
        """Drop a waiting item (cancelled before admission); True when it was waiting."""
        for users in self.waiting.values():
            for user, queue in list(users.items()):
                for entry in queue:
                    if entry[0] is item:
                        queue.remove(entry)
                        if not queue:
                            del users[user]
                        return True
        return False

    def pop(self):
        """The next item to admit, or None when nobody eligible waits."""
        for priority in PRIORITIES:
            users = self.waiting[priority]
            for user in list(users):
                if priority == "interactive" and self.running[user] >= self.per_user:
                    continue
                queue = users.pop(user)
                item, _ = queue.popleft()
                if queue:
                    users[user] = queue  # back of the rotation: the next user goes first next time
                if priority == "interactive":
                    self.running[user] += 1
                return item, user
        return None

    def finished(self, user, priority="interactive"):
        if priority == "background":
            return
        self.running[user] -= 1
        if self.running[user] <= 0:
            del self.running[user]

    def order(self):
        """Waiting items in the order they would be admitted if slots freed one by one."""
        out = []
        for priority in PRIORITIES:
            queues = [list(q) for q in self.waiting[priority].values()]
            depth = 0
            while any(depth < len(q) for q in queues):
                out.extend(q[depth][0] for q in queues if depth < len(q))
                depth += 1
        return out
