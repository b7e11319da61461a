-- Settle one request, atomically: replace its reservation with the actual cost and append
-- the usage event to the bucket's stream. Idempotent on the request id: a second settle
-- finds no reservation and does nothing. A reservation that expired (tombstone "x|...")
-- is still charged, once. The cost belongs to the period the request was admitted in:
-- if that period has ended or was reset, only the all-time counter takes it.
-- KEYS[1] the key record hash   KEYS[2] reservations hash   KEYS[3] reservation expiries zset
-- KEYS[4] the bucket's usage stream
-- ARGV[1] request id   ARGV[2] actual cost, nano-USD   ARGV[3..] the event's field, value pairs
-- Returns {1, all-time usage, period usage} when settled now, {0} when already settled.
local rec, res, exp = KEYS[1], KEYS[2], KEYS[3]
local function int(x) return string.format('%.0f', x) end
local v = redis.call('HGET', res, ARGV[1])
if not v then return {0} end
local head, from = string.match(v, '^([^|]*)|([^|]*)')
redis.call('HDEL', res, ARGV[1])
redis.call('ZREM', exp, ARGV[1])
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 3))

local f = redis.call('HMGET', rec, 'used', 'p_start', 'p_used', 'r_all', 'r_per')
if not f[1] then
  -- The counters are being rebuilt from the ledger, which this event will reach.
  return {1, -1, -1}
end
local cost = tonumber(ARGV[2])
local used, p_start = tonumber(f[1]) + cost, f[2] or ''
local p_used, r_all, r_per = tonumber(f[3] or '0'), tonumber(f[4] or '0'), tonumber(f[5] or '0')
if head ~= 'x' then
  local amount = tonumber(head)
  r_all = r_all - amount
  if from == p_start then r_per = r_per - amount end
end
if from ~= '' and from == p_start then p_used = p_used + cost end
if r_all < 0 then r_all = 0 end
if r_per < 0 then r_per = 0 end
redis.call('HSET', rec, 'used', int(used), 'p_used', int(p_used),
           'r_all', int(r_all), 'r_per', int(r_per))
return {1, int(used), int(p_used)}
