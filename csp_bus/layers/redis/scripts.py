"""The Lua scripts of the Redis layer (specified in ``docs/redis-protocol.md``).

Scripts run with ``EVALSHA``; on ``NOSCRIPT`` (a restarted server, a promoted replica)
they are loaded with ``SCRIPT LOAD`` and run again, never sent whole on every call.

Envelope (one LIST element): 13 ASCII digits (deadline, Unix ms) + channel name + ``\\n``
+ msgpack message. Lists are pushed on the left (LPUSH) and popped on the right, so the
right end holds the oldest message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis

from .client import RedisNode, RedisReplyError

__all__ = [
    "FANOUT",
    "GROUP_ADD",
    "GROUP_DISCARD",
    "GROUP_MEMBERS",
    "LEAVE_ALL",
    "POP_ALL",
    "SEND",
    "SEND_GROUP",
    "Script",
    "capacity_args",
    "glob_to_lua",
]


class Script:
    """A Lua script run by SHA1."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, node: RedisNode, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await node.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        await node.execute("SCRIPT", "LOAD", self.source)
        return await node.execute("EVALSHA", self.sha, len(keys), *keys, *args)

    def head(self, keys: Sequence[Any], nargs: int) -> bytes:
        """The start of this script's ``EVALSHA`` command on ``keys``, for a hot caller
        that appends its ``nargs`` arguments itself, each a RESP bulk string
        (``$<length>\\r\\n<bytes>\\r\\n``), and runs it with :meth:`run_packed`."""
        packed = hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys))
        return b"*%d\r\n%b" % (3 + len(keys) + nargs, packed.split(b"\r\n", 1)[1])

    def pack(self, keys: Sequence[bytes], args: Sequence[bytes]) -> bytes:
        """This script's whole ``EVALSHA`` command; ``keys`` and ``args`` are packed
        already, each a RESP bulk string (:func:`~.client.bulk`)."""
        count = b"%d" % len(keys)
        return b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$%d\r\n%b\r\n%b%b" % (
            3 + len(keys) + len(args),
            self.sha.encode(),
            len(count),
            count,
            b"".join(keys),
            b"".join(args),
        )

    async def run_packed(self, node: RedisNode, command: bytes) -> Any:
        """Run a whole ``EVALSHA`` command of this script built on :meth:`head`."""
        try:
            return await node.submit(command, "EVALSHA")
        except RedisReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        return await self.load_and_run(node, command)

    async def load_and_run(self, node: RedisNode, command: bytes) -> Any:
        """After ``NOSCRIPT``: load the script, then run ``command`` (packed) again."""
        await node.execute("SCRIPT", "LOAD", self.source)
        return await node.submit(command, "EVALSHA")


SEND = Script(
    "send",
    """
-- KEYS[1] queue list; ARGV: envelope, capacity, now (ms), key time-to-live (ms)
local n = redis.call('LLEN', KEYS[1])
local cap = tonumber(ARGV[2])
if n >= cap then
  local now = tonumber(ARGV[3])
  while n > 0 do
    local tail = redis.call('LINDEX', KEYS[1], -1)
    if tonumber(string.sub(tail, 1, 13)) > now then break end
    redis.call('RPOP', KEYS[1])
    n = n - 1
  end
  if n >= cap then return 0 end
end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
""",
)

# The fan-out shared by SEND_GROUP (members read from the group) and FANOUT (members
# given by the caller, for a sharded layer). Per member: its queue key (the part up to
# '!' for a process-local channel); when the oldest message there has expired unread and
# the member is process-local, its reader is gone: it leaves the group (DESIGN.md 3) and
# is skipped; a full queue (after trimming expired messages) is skipped and counted.
_FANOUT_BODY = """
local base, payload, deadline = ARGV[1], ARGV[2], ARGV[3]
local now, ttl, default_cap = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local npatterns = tonumber(ARGV[7])
local patterns = {}
for i = 1, npatterns do
  patterns[i] = {ARGV[6 + 2 * i], tonumber(ARGV[7 + 2 * i])}
end
local caps = {}
local function capacity(qk)
  local c = caps[qk]
  if c then return c end
  c = default_cap
  for _, p in ipairs(patterns) do
    if string.find(qk, p[1]) then c = p[2]; break end
  end
  caps[qk] = c
  return c
end
local function leave_all(ch)
  local mkey = base .. 'm:' .. ch
  for _, g in ipairs(redis.call('SMEMBERS', mkey)) do
    redis.call('ZREM', base .. 'g:' .. g, ch)
  end
  redis.call('DEL', mkey)
end
local sent, dropped, dead = 0, 0, {}
-- per queue key: {key, room (items it can still take), envelopes or member names,
-- process-local?}. All the members of one process prefix get ONE envelope naming them
-- all ("a!x,a!y"): one send_group is one queued item per prefix.
local queues, order = {}, {}
-- the last live process-local queue met: members on the same prefix (the common case,
-- a room on one server) are appended without a lookup or a substring each
local last, last_key, last_n = nil, nil, 0
local find = string.find
local function deliver(ch)
  local bang = find(ch, '!', 1, true)
  local qk = ch
  if bang then qk = string.sub(ch, 1, bang) end
  local q = queues[qk]
  if not q then
    local key = base .. 'q:' .. qk
    local tail = redis.call('LINDEX', key, -1)
    local room = 0
    if bang and tail and tonumber(string.sub(tail, 1, 13)) <= now then
      room = -1  -- dead reader: every member on this prefix leaves its groups
    else
      local n = redis.call('LLEN', key)
      local cap = capacity(qk)
      if n >= cap then
        while n > 0 do
          local t = redis.call('LINDEX', key, -1)
          if tonumber(string.sub(t, 1, 13)) > now then break end
          redis.call('RPOP', key)
          n = n - 1
        end
      end
      room = cap - n
    end
    q = {key, room, {}, bang}
    queues[qk] = q
    order[#order + 1] = q
  end
  if q[2] < 0 then
    dead[#dead + 1] = ch
    dropped = dropped + 1
  elseif bang then
    local items = q[3]
    last, last_key, last_n = q, qk, #items + 1
    items[last_n] = ch
  elseif #q[3] < q[2] then
    q[3][#q[3] + 1] = deadline .. ch .. '\\n' .. payload
  else
    dropped = dropped + 1
  end
end
local function deliver_all(list, first, n)
  for i = first, n do
    local ch = list[i]
    if last and find(ch, last_key, 1, true) == 1 then
      last_n = last_n + 1
      last[3][last_n] = ch
    else
      deliver(ch)
    end
  end
end
local function push_all()
  for _, q in ipairs(order) do
    local items = q[3]
    if #items > 0 then
      if q[4] then
        if q[2] >= 1 then
          redis.call('LPUSH', q[1], deadline .. table.concat(items, ',') .. '\\n' .. payload)
          redis.call('PEXPIRE', q[1], ttl)
          sent = sent + #items
        else
          dropped = dropped + #items
        end
      else
        for i = 1, #items, 1000 do
          redis.call('LPUSH', q[1], unpack(items, i, math.min(i + 999, #items)))
        end
        redis.call('PEXPIRE', q[1], ttl)
        sent = sent + #items
      end
    end
  end
end
"""

SEND_GROUP = Script(
    "send_group",
    """
-- KEYS[1] group sorted set (member -> expiry, ms); ARGV: key prefix ("P:"), message,
-- deadline (13 digits), now (ms), queue time-to-live (ms), default capacity,
-- pattern count, then pattern/capacity pairs (Lua patterns)
"""
    + _FANOUT_BODY
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
deliver_all(members, 1, #members)
push_all()
for _, ch in ipairs(dead) do leave_all(ch) end
return {sent, dropped, #dead}
""",
)

FANOUT = Script(
    "fanout",
    """
-- no KEYS (client-side sharding: the caller picked this server for these members);
-- ARGV as send_group, then the member channel names. Returns sent, dropped, then the
-- dead members (the caller removes them from their groups).
"""
    + _FANOUT_BODY
    + """
deliver_all(ARGV, 8 + 2 * npatterns, #ARGV)
push_all()
local result = {sent, dropped}
for _, ch in ipairs(dead) do result[#result + 1] = ch end
return result
""",
)

GROUP_MEMBERS = Script(
    "group_members",
    """
-- KEYS[1] group sorted set; ARGV[1] now (ms): drop expired members, return the rest
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
""",
)

GROUP_ADD = Script(
    "group_add",
    """
-- KEYS[1] group sorted set, KEYS[2] (process-local members only) the member's set of
-- groups; ARGV: member, its expiry (ms), time-to-live (ms), group name
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if KEYS[2] then
  redis.call('SADD', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
""",
)

GROUP_DISCARD = Script(
    "group_discard",
    """
-- KEYS[1] group sorted set, KEYS[2] (process-local members only) the member's groups;
-- ARGV: member, group name
redis.call('ZREM', KEYS[1], ARGV[1])
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1
""",
)

POP_ALL = Script(
    "pop_all",
    """
-- KEYS: queue lists; ARGV: how many to pop from each (right end, oldest first).
-- Returns key, envelopes, key, envelopes... for the lists that had any.
local out = {}
for i, key in ipairs(KEYS) do
  local items = redis.call('RPOP', key, ARGV[i])
  if items then
    out[#out + 1] = key
    out[#out + 1] = items
  end
end
return out
""",
)

LEAVE_ALL = Script(
    "leave_all",
    """
-- KEYS[1] a process-local channel's set of groups; ARGV: group key prefix ("P:g:"),
-- the channel. Its reader is gone: it leaves every group (DESIGN.md 3). Returns the
-- group names (a sharded layer removes it on the groups' own servers too).
local groups = redis.call('SMEMBERS', KEYS[1])
for _, g in ipairs(groups) do redis.call('ZREM', ARGV[1] .. g, ARGV[2]) end
redis.call('DEL', KEYS[1])
return groups
""",
)

_LUA_MAGIC = set("^$()%.[]*+-?")


def glob_to_lua(pattern: str) -> str:
    """A ``fnmatch`` glob (``*``, ``?``, ``[seq]``, ``[!seq]``) as an anchored Lua pattern."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i:end]
            i = end + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            escaped = "".join("%" + c if c in _LUA_MAGIC and c != "-" else c for c in body)
            out.append("[" + ("^" if negate else "") + escaped + "]")
        elif char in _LUA_MAGIC:
            out.append("%" + char)
        else:
            out.append(char)
    out.append("$")
    return "".join(out)


def capacity_args(default: int, patterns: Mapping[str, int]) -> list[Any]:
    """ARGV tail describing per-pattern capacities for the fan-out scripts."""
    args: list[Any] = [default, len(patterns)]
    for pattern, value in patterns.items():
        args += [glob_to_lua(pattern), value]
    return args
