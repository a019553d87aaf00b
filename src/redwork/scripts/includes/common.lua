-- Shared by every transition: return codes, the server clock and event emission.
-- Return codes; mirrored by redwork.scripts.Code.
local OK = 0
local LEASE_LOST = 1
local ALREADY_DONE = 2
local DUPLICATE = 3
local NOT_FOUND = 4

-- The events stream keeps roughly this many entries (XADD MAXLEN ~).
local EVENTS_MAXLEN = 10000

-- Server time in milliseconds: every lease and schedule uses one clock, Redis's,
-- so that workers with skewed clocks still agree.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Record a job event in the capped stream (replay) and on the queue's channel (live).
-- Queue names and job ids are restricted to [A-Za-z0-9_.:-], so they need no escaping.
local function emit(events_key, queue, event, job_id, attempt, now)
  redis.call('XADD', events_key, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'event', event, 'job', job_id, 'attempt', attempt, 'at', now)
  redis.call('PUBLISH', events_key,
    '{"event":"' .. event .. '","job":"' .. job_id .. '","queue":"' .. queue ..
    '","attempt":' .. attempt .. ',"at":' .. now .. '}')
end

-- A finished job's own channel, so that a caller waiting for its result blocks on
-- the server instead of polling.
local function announce_end(prefix, job_id, state)
  redis.call('PUBLISH', prefix .. 'job:' .. job_id, state)
end

-- Fencing: only the delivery holding the current token may end or extend a job.
-- A repeat of the call that already ended this delivery is ALREADY_DONE.
local function check_lease(key, token)
  local fields = redis.call('HMGET', key, 'state', 'token')
  if fields[2] ~= token then return LEASE_LOST end
  local state = fields[1]
  if state == 'active' then return OK end
  if state == 'completed' or state == 'failed' or state == 'delayed' then return ALREADY_DONE end
  return LEASE_LOST
end
