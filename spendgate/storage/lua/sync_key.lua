-- Apply a key's configuration from Postgres unless Redis already holds that version or a
-- newer one (two admin writes may reach Redis in the opposite order of their commits).
-- A changed period anchor starts a new period: its usage and reservations restart at 0.
-- Counters are set only on a record that has none (a new key, or one rebuilt after Redis
-- lost it), whatever the version.
-- KEYS[1]  the key record hash: <prefix>:{b<N>}:key:<key_id>
-- ARGV[1]  version (integer, from Postgres)
-- ARGV[2]  time to live in ms, 0 = keep (a deleted key's tombstone expires)
-- ARGV[3]  period anchor in epoch ms, "" when the key has no recurring limit
-- ARGV[4]  all-time usage to start from, "" = leave the counters alone
-- ARGV[5]  usage of the period starting at ARGV[6], when ARGV[4] is given
-- ARGV[6]  start of that period in epoch ms ("" without a recurring limit)
-- ARGV[7..] field, value pairs of the configuration
-- Returns 1 if the configuration was applied, 0 if stale.
if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[1], 'used') == 0 then
  redis.call('HSET', KEYS[1], 'used', ARGV[4], 'p_used', ARGV[5], 'p_start', ARGV[6],
             'r_all', '0', 'r_per', '0')
end
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current >= tonumber(ARGV[1]) then
  return 0
end
local anchor = ARGV[3]
local previous = redis.call('HGET', KEYS[1], 'anchor')
if anchor ~= '' and previous ~= false and previous ~= anchor then
  redis.call('HSET', KEYS[1], 'p_start', anchor, 'p_used', '0', 'r_per', '0')
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'anchor', anchor, unpack(ARGV, 7))
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
