--[[ progress: record how far a running job has got (active -> active), fenced like a
result: only the current delivery may report it.
KEYS[1] events    STREAM and channel of job events
ARGV[1] prefix    ARGV[2] queue
ARGV[3] job id    ARGV[4] fencing token
ARGV[5] progress  JSON, kept in the job's `progress` field
Returns OK, LEASE_LOST or ALREADY_DONE.
]]
-- @include common
local prefix, queue, id = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'job:' .. id
local code, attempt = check_lease(key, ARGV[4])
if code == OK then
  local now = now_ms()
  redis.call('HSET', key, 'progress', ARGV[5])
  -- The event carries the value, so that live clients need not read the job for it.
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', 'progress',
    'jobs', id, 'attempts', attempt, 'at', now, 'progress', ARGV[5])
  redis.call('PUBLISH', KEYS[1], '{"event":"progress","queue":"' .. queue .. '","jobs":["' ..
    id .. '"],"attempts":[' .. attempt .. '],"at":' .. now .. ',"progress":' .. ARGV[5] .. '}')
end
return code
