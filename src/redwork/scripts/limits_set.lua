--[[ limits_set: set or clear the limit of a scope (see includes/limits.lua). Jobs parked
under the scope go back to the wait list, to be checked against the new limit as they
are fetched (in their order: ahead of the others).
KEYS[1] limits    HASH scope -> "<concurrency> <rate> <period ms>"
KEYS[2] wait      LIST of waiting job ids of priority 0
KEYS[3] marker    ZSET wake-up marker
ARGV[1] prefix
ARGV[2] scope     'queue', 'task:<name>' or 'group' (each group value)
ARGV[3] spec      "<concurrency> <rate> <period ms>", or '' to clear the limit
Returns the number of parked jobs sent back (0 too when the spec did not change).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[2], marker = KEYS[3] }
local scope, spec = ARGV[2], ARGV[3]
if (redis.call('HGET', KEYS[1], scope) or '') == spec then return 0 end
if spec == '' then
  redis.call('HDEL', KEYS[1], scope)
else
  redis.call('HSET', KEYS[1], scope, spec)
end
local moved = 0
for _, name in ipairs(redis.call('SMEMBERS', q.prefix .. 'parking')) do
  if name == scope or (scope == 'group' and string.sub(name, 1, 6) == 'group:') then
    moved = moved + unpark(q, name, math.huge)
    redis.call('ZREM', q.prefix .. 'throttled', name)
  end
end
return moved
