"""Running order totals per user, counted once per message id however often a track is redelivered.

Promoter has no event API, so "Order Completed" lands as contact attributes (``order_count``,
``lifetime_revenue``, ``last_order_*``). Counts are increments, which are not idempotent by nature;
the seen-set makes them so.
"""

from __future__ import annotations

from typing import cast

import redis

from worker import keys

_RECORD = """
-- KEYS: totals hash, seen set; ARGV: message id, amount, field/value pairs...
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'order_count', 1)
  redis.call('HINCRBYFLOAT', KEYS[1], 'lifetime_revenue', ARGV[2])
  if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
end
return redis.call('HGETALL', KEYS[1])
"""


class Orders:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._record = client.register_script(_RECORD)

    def record(self, user: str, message_id: str, amount: str, last_order: dict[str, str]) -> dict[str, str]:
        """Add one order (once per message id) and return the user's totals after it."""
        flat = [part for pair in last_order.items() for part in pair]
        result = self._record(
            keys=[keys.orders(user), f"{keys.orders(user)}:seen"],
            args=[message_id, amount, *flat],
            client=self.client,
        )
        return dict(zip(result[::2], result[1::2], strict=True))

    def totals(self, user: str) -> dict[str, str]:
        return cast(dict[str, str], self.client.hgetall(keys.orders(user)))
