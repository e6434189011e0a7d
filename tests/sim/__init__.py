"""Deterministic simulation of delivery: the relay's own task bodies, Lua and Redis, driven by a seed.

One seed is one world: settings drawn for it, a traffic of people (shared devices, aliases, email
changes, orders, resends, skewed clocks), a scripted Promoter that answers each call as the seed says
(200, field errors, 401, 429, 5xx, timeouts before or after the call took effect), and virtual workers
that run ``tasks.deliver`` as greenlets. The scheduler (``world``) decides at every step boundary, each
Lua script call, each Promoter call and its answer, which actor moves next, and a virtual clock drives
every TTL, lease, hold, retry and budget. ``oracle`` is a sequential reference model of what must
happen to each person and message; its invariants are checked during the run and at quiescence.

``python -m tests.sim`` (``make sim``) runs seeds and prints a one-line reproduction for each failure.
"""
