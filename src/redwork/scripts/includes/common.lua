-- Shared by every transition: return codes, the server clock, batched events and
-- the fencing check.
-- Return codes; mirrored by redwork.scripts.Code.
local OK = 0
local LEASE_LOST = 1
local ALREADY_DONE = 2
local DUPLICATE = 3

-- The events stream keeps roughly this many entries (XADD MAXLEN ~).
local EVENTS_MAXLEN = 10000
-- Most arguments passed to one command built from a list (Lua's unpack has a limit).
local CHUNK = 1000

-- Server time in milliseconds: every lease and schedule uses one clock, Redis's,
-- so that workers with skewed clocks still agree.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Run `command key [option] item...` over a list, CHUNK items (of `step` arguments
-- each) at a time.
local function call_chunked(command, key, items, step, option)
  local size = CHUNK * (step or 1)
  for i = 1, #items, size do
    local last = math.min(i + size - 1, #items)
    if option then
      redis.call(command, key, option, unpack(items, i, last))
    else
      redis.call(command, key, unpack(items, i, last))
    end
  end
end

-- Events are gathered during a script and recorded once per kind at its end: one
-- stream entry (replay) and one message on the queue's channel (live), each naming
-- every job concerned. One entry per job would cost more than the transition itself.
local event_order, event_jobs, event_attempts = {}, {}, {}

local function note(event, job_id, attempt)
  if not event_jobs[event] then
    event_order[#event_order + 1] = event
    event_jobs[event], event_attempts[event] = {}, {}
  end
  local jobs = event_jobs[event]
  jobs[#jobs + 1] = job_id
  event_attempts[event][#jobs] = tostring(attempt or 0)
end

-- Queue names and job ids are restricted to [A-Za-z0-9_.:-], so they need no escaping.
local function flush_events(events_key, queue, now)
  for _, event in ipairs(event_order) do
    local attempts = table.concat(event_attempts[event], ',')
    redis.call('XADD', events_key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', event,
      'jobs', table.concat(event_jobs[event], ','), 'attempts', attempts, 'at', now)
    redis.call('PUBLISH', events_key, '{"event":"' .. event .. '","queue":"' .. queue ..
      '","jobs":["' .. table.concat(event_jobs[event], '","') .. '"],"attempts":[' ..
      attempts .. '],"at":' .. now .. '}')
  end
end

-- A finished job's own channel, so that a caller waiting for its result blocks on
-- the server instead of polling.
local function announce_end(prefix, job_id, state)
  redis.call('PUBLISH', prefix .. 'job:' .. job_id, state)
end

-- Move a job to the failed store, where it stays (no expiry) until retried or purged.
local function to_failed_store(failed_key, prefix, id, reason, message, attempt, now)
  local key = prefix .. 'job:' .. id
  redis.call('HSET', key, 'state', 'failed', 'reason', reason, 'error', message,
    'finished_at', now)
  redis.call('PERSIST', key)
  redis.call('ZADD', failed_key, now, id)
  note('failed', id, attempt)
  announce_end(prefix, id, 'failed')
end

-- Fencing: only the delivery holding the current token may end or extend a job.
-- A repeat of the call that already ended this delivery is ALREADY_DONE.
-- Returns that code and the job's attempt number.
local function check_lease(key, token)
  local job = redis.call('HMGET', key, 'state', 'token', 'attempt')
  local state = job[1]
  if job[2] ~= token then return LEASE_LOST, job[3] end
  if state == 'active' then return OK, job[3] end
  if state == 'completed' or state == 'failed' or state == 'delayed' then
    return ALREADY_DONE, job[3]
  end
  return LEASE_LOST, job[3]
end
