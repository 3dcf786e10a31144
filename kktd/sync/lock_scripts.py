"""The sync lock's Lua scripts (SPEC section 3), each one atomic on the Redis side.

ACQUIRE sets the key and takes the next fence in one step; RENEW and RELEASE act only while the
key still holds our token, so a lease that ended can neither be extended nor delete another's.
"""

from __future__ import annotations

# Grants when the key is free, or already ours: a call retried after a lost answer must not
# report us as our own blocker (it takes a new fence, which only moves fences forward).
ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if fence == 1 then
  local now = redis.call('TIME')
  fence = math.max(fence, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
end
if fence <= floor then
  fence = floor + 1
end
redis.call('SET', KEYS[2], string.format('%d', fence))
return {1, fence}
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
