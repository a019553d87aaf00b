--[[ counts: read a queue's sizes and counters in one consistent snapshot (no transition).
KEYS[1] wait  KEYS[2] active  KEYS[3] delayed  KEYS[4] failed  KEYS[5] stats  KEYS[6] held
KEYS[7] levels  ZSET of the priorities whose lists (wait:<p>) may hold jobs
KEYS[8] limited STRING count of jobs parked by a rate or concurrency limit
Returns { waiting (every priority), active, delayed, failed, { counter, value, ... }, held,
          limited }.
]]
local waiting = redis.call('LLEN', KEYS[1])
for _, level in ipairs(redis.call('ZRANGE', KEYS[7], 0, -1)) do
  waiting = waiting + redis.call('LLEN', KEYS[1] .. ':' .. level)
end
return {
  waiting,
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('HGETALL', KEYS[5]),
  tonumber(redis.call('GET', KEYS[6]) or 0),
  tonumber(redis.call('GET', KEYS[8]) or 0),
}
