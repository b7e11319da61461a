-- Admit one request, atomically: the key is active, its period rolled if it ended, expired
-- reservations released, both limits checked, and the estimate reserved. Idempotent on the
-- request id: a repeated call (a retry after a lost reply) returns the first admission.
-- KEYS[1] the key record hash   KEYS[2] reservations hash   KEYS[3] reservation expiries zset
-- ARGV[1] now, epoch ms          ARGV[2] request id
-- ARGV[3] the anchor the caller computed the period from ("" = no recurring limit)
-- ARGV[4] that period's start, ms ("" = none)     ARGV[5] its end, ms ("" = none)
-- ARGV[6] input cost estimate, nano-USD           ARGV[7] output cost estimate, nano-USD
-- ARGV[8] "hard" or "reserve"
-- ARGV[9] output price, nano-USD per million tokens   ARGV[10] output tokens per choice asked
-- ARGV[11] choices (n)                                ARGV[12] reservation lifetime, ms
-- Reservations: request id -> "<reserved>|<period start>|<output tokens or -1>" ("x|..."
-- once expired).
-- Returns {"ok", reserved, output tokens per choice (-1 = unchanged), period start}
--       | {"missing"} | {"inactive"} | {"stale"}
--       | {"all_time" | "period", 1 if settled usage alone is the cause else 0}
local rec, res, exp = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local function int(x) return string.format('%.0f', x) end

local function parse(v) return string.match(v, '^([^|]*)|([^|]*)|?(.*)$') end

local earlier = redis.call('HGET', res, ARGV[2])
if earlier then
  local amount, from, out = parse(earlier)
  return {'ok', tonumber(amount) or 0, tonumber(out) or -1, from}
end

local f = redis.call('HMGET', rec, 'status', 'limit', 'r_amount', 'anchor',
                     'used', 'p_start', 'p_used', 'r_all', 'r_per')
if not f[1] or not f[5] then return {'missing'} end
if f[1] ~= 'active' then return {'inactive'} end
if (f[4] or '') ~= ARGV[3] then return {'stale'} end
local used, p_start = tonumber(f[5]), f[6] or ''
local p_used, r_all, r_per = tonumber(f[7] or '0'), tonumber(f[8] or '0'), tonumber(f[9] or '0')

-- Expired reservations: release them, and keep a tombstone for a day so that a late
-- settle still charges (once) without releasing twice.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 100)) do
  local v = redis.call('HGET', res, id)
  if v and string.sub(v, 1, 1) ~= 'x' then
    local head, from, out = parse(v)
    local amount = tonumber(head)
    r_all = r_all - amount
    if from == p_start then r_per = r_per - amount end
    redis.call('HSET', res, id, 'x|' .. from .. '|' .. out)
    redis.call('ZADD', exp, now + 86400000, id)
  else
    redis.call('HDEL', res, id)
    redis.call('ZREM', exp, id)
  end
end
if r_all < 0 then r_all = 0 end
if r_per < 0 then r_per = 0 end

-- Roll the period lazily; never back to an older one (a caller's clock may lag).
local recurring = f[3] and f[3] ~= ''
if recurring and (p_start == '' or tonumber(ARGV[4]) > tonumber(p_start)) then
  p_start, p_used, r_per = ARGV[4], 0, 0
end

local hard = ARGV[8] == 'hard'
local input_cost, output_cost = tonumber(ARGV[6]), tonumber(ARGV[7])
local room, room_kind, room_reserved = nil, nil, 0
if f[2] and f[2] ~= '' then
  local limit = tonumber(f[2])
  if used >= limit then return {'all_time', 1} end
  if not hard and used + r_all >= limit then return {'all_time', 0} end
  room, room_kind, room_reserved = limit - used - r_all, 'all_time', r_all
end
if recurring then
  local limit = tonumber(f[3])
  if p_used >= limit then return {'period', 1} end
  if not hard and p_used + r_per >= limit then return {'period', 0} end
  if room == nil or limit - p_used - r_per < room then
    room, room_kind, room_reserved = limit - p_used - r_per, 'period', r_per
  end
end

-- Hard mode: the estimate must fit; lower the output cap to what the room pays for.
local out_tokens = -1
if hard and room ~= nil and input_cost + output_cost > room then
  local price, asked, n = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local budget = room - input_cost
  local fit = 0
  if budget > 0 and price > 0 then
    fit = math.min(asked, math.floor(budget * 1000000 / (price * n)))
    while fit > 0 and math.ceil(fit * n * price / 1000000) > budget do fit = fit - 1 end
  end
  if fit < 1 then
    if room_reserved > 0 then return {room_kind, 0} end
    return {room_kind, 1}
  end
  out_tokens = fit
  output_cost = math.ceil(fit * n * price / 1000000)
end

local reserved = input_cost + output_cost
r_all = r_all + reserved
if recurring then r_per = r_per + reserved end
redis.call('HSET', res, ARGV[2], int(reserved) .. '|' .. p_start .. '|' .. out_tokens)
redis.call('ZADD', exp, now + tonumber(ARGV[12]), ARGV[2])
redis.call('HSET', rec, 'p_start', p_start, 'p_used', int(p_used),
           'r_all', int(r_all), 'r_per', int(r_per))
return {'ok', int(reserved), out_tokens, p_start}
