-- Apply a key's configuration from Postgres unless Redis already holds that version or a
-- newer one (two admin writes may reach Redis in the opposite order of their commits).
-- A changed period anchor starts a new period: its usage restarts at 0.
-- KEYS[1]  the key record hash: <prefix>:{b<N>}:key:<key_id>
-- ARGV[1]  version (integer, from Postgres)
-- ARGV[2]  time to live in ms, 0 = keep (a deleted key's tombstone expires)
-- ARGV[3]  period anchor in epoch ms, "" when the key has no recurring limit
-- ARGV[4..] field, value pairs of the configuration
-- Returns 1 if applied, 0 if stale.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current >= tonumber(ARGV[1]) then
  return 0
end
local anchor = ARGV[3]
if anchor ~= '' and redis.call('HGET', KEYS[1], 'anchor') ~= anchor then
  redis.call('HSET', KEYS[1], 'p_start', anchor, 'p_used', '0')
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'anchor', anchor, unpack(ARGV, 4))
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
