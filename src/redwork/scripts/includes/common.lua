-- Shared by every transition: return codes, the server clock, batched events and
-- the fencing check.
-- Return codes; mirrored by redwork.scripts.Code.
local OK = 0
local LEASE_LOST = 1
local ALREADY_DONE = 2
local DUPLICATE = 3
local CONFLICT = 4
local LATER = 5

-- The events stream keeps roughly this many entries (XADD MAXLEN ~), each naming at
-- most EVENT_JOBS jobs: a few tens of MB at most.
local EVENTS_MAXLEN = 10000
local EVENT_JOBS = 100
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

-- Append `name value` to a list of hash fields, unless the value is '' or '0' (absent
-- fields read as their default: less for the server to store).
-- A job id as redwork.job.NAME_PATTERN allows: 1-128 of A-Z a-z 0-9 _ . : -
local function is_job_id(id)
  return #id > 0 and #id <= 128 and not string.find(id, '[^%w_%.:%-]')
end

local function add_field(fields, name, value)
  if value ~= '' and value ~= '0' then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
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
    local jobs, attempts = event_jobs[event], event_attempts[event]
    -- The stream is capped in entries: entries of at most EVENT_JOBS jobs cap it in
    -- bytes too, however large the calls (one of 1,000 jobs would take 35 KB).
    for first = 1, #jobs, EVENT_JOBS do
      local last = math.min(#jobs, first + EVENT_JOBS - 1)
      redis.call('XADD', events_key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', event,
        'jobs', table.concat(jobs, ',', first, last),
        'attempts', table.concat(attempts, ',', first, last), 'at', now)
    end
    attempts = table.concat(attempts, ',')
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

-- Priorities: a job of priority 0 (the default) waits in the list `wait`, one of
-- priority 1..9 in `wait:<p>`; the ZSET `levels` names the priorities that may have
-- jobs (fetch drops a level it finds empty). Fetch takes from the highest level first:
-- priorities are strict, and each level is first in, first out. `front` puts the jobs
-- first in line, ids[1] to be taken first (jobs that were ahead: handed back, recovered).
local function push_waiting(q, ids, priorities, front)
  local command = front and 'RPUSH' or 'LPUSH'
  local plain = {}
  local first, last, step = 1, #ids, 1
  if front then first, last, step = #ids, 1, -1 end
  for i = first, last, step do
    local id = ids[i]
    local p = tonumber(priorities and priorities[i] or 0) or 0
    if p > 0 then
      redis.call(command, q.wait .. ':' .. p, id)
      redis.call('ZADD', q.prefix .. 'levels', p, p)
    else
      plain[#plain + 1] = id
    end
  end
  if #plain > 0 then call_chunked(command, q.wait, plain) end
end

-- Take a job out of the wait list of its priority; false when it was not there.
local function remove_waiting(q, id, priority)
  local p = tonumber(priority or 0) or 0
  return redis.call('LREM', p > 0 and q.wait .. ':' .. p or q.wait, 1, id) == 1
end

-- Per-key ordering: of the jobs sharing a key, only the oldest (the key's head)
-- circulates (waiting, active or delayed); the others wait in order in the list
-- `key:<key>`, and the hash `keys` names each key's head. When the head ends for good,
-- the next job of its key joins the wait list. Lease expiry, retries and hand-backs keep
-- the head where it is, so a key is never run by two deliveries under valid leases.
-- Unique jobs: `unique:<u>` names the one job of uniqueness key u that is queued or
-- running. A job ending for good releases both.
local function release_holds(q, id)
  local job = redis.call('HMGET', q.prefix .. 'job:' .. id, 'key', 'unique')
  local key, unique = job[1], job[2]
  if unique and redis.call('GET', q.prefix .. 'unique:' .. unique) == id then
    redis.call('DEL', q.prefix .. 'unique:' .. unique)
  end
  -- Only the head holds its key (a check that keeps a stray call from skipping a job).
  if not key or redis.call('HGET', q.prefix .. 'keys', key) ~= id then return end
  local next_id = redis.call('LPOP', q.prefix .. 'key:' .. key)
  if next_id then
    redis.call('HSET', q.prefix .. 'keys', key, next_id)
    redis.call('DECR', q.prefix .. 'held')
    push_waiting(q, { next_id }, { redis.call('HGET', q.prefix .. 'job:' .. next_id, 'priority') })
    redis.call('ZADD', q.marker, 0, 'm')
  else
    redis.call('HDEL', q.prefix .. 'keys', key)
  end
end

-- The job holding uniqueness key u, if it has not ended.
local function unique_holder(q, u)
  local holder = redis.call('GET', q.prefix .. 'unique:' .. u)
  if not holder then return false end
  local state = redis.call('HGET', q.prefix .. 'job:' .. holder, 'state')
  if state == 'waiting' or state == 'delayed' or state == 'active' or state == 'pending' then
    return holder
  end
  return false
end

-- Put a job into circulation (the wait list), or behind the head of its key.
-- `front` puts it first in its key's line (a job that was already ahead of the others).
local function admit(q, id, key, front)
  if key and redis.call('HSETNX', q.prefix .. 'keys', key, id) == 0 then
    if redis.call('HGET', q.prefix .. 'keys', key) == id then return true end  -- the head
    redis.call(front and 'LPUSH' or 'RPUSH', q.prefix .. 'key:' .. key, id)
    redis.call('INCR', q.prefix .. 'held')
    return false
  end
  return true
end

-- @include workflow
-- @include limits

-- Move a job to the failed store, where it stays (no expiry) until retried or purged.
-- It no longer holds its key: the next job of the key may run; a workflow's nodes that
-- depend on it are skipped.
local function to_failed_store(q, id, reason, message, attempt, now)
  local key = q.prefix .. 'job:' .. id
  redis.call('HSET', key, 'state', 'failed', 'reason', reason, 'error', message,
    'finished_at', now)
  redis.call('PERSIST', key)
  redis.call('ZADD', q.failed, now, id)
  release_holds(q, id)
  note('failed', id, attempt)
  announce_end(q.prefix, id, 'failed')
  local wid = redis.call('HGET', key, 'wf')
  if wid then node_ended(q, wid, id, 'failed', now) end
end

-- End a job as cancelled: a final state that expires after `ttl` (with its workflow,
-- for a workflow's node, whose dependants are skipped).
local function to_cancelled(q, id, attempt, wid, ttl, now)
  release_holds(q, id)
  redis.call('HSET', q.prefix .. 'job:' .. id, 'state', 'cancelled', 'finished_at', now)
  note('cancelled', id, attempt)
  announce_end(q.prefix, id, 'cancelled')
  if not (wid and node_ended(q, wid, id, 'cancelled', now)) then
    redis.call('EXPIRE', q.prefix .. 'job:' .. id, ttl)
  end
end

-- Withdraw a job that has not started (waiting, held behind its key, delayed, or
-- pending on its dependencies): it is cancelled, a final state that expires after `ttl`
-- (with its workflow, for a workflow's node). Returns OK, or the state that kept it
-- from being cancelled ('unknown' when there is no such job), or 'forwarded' for a
-- workflow's node released to another queue: it is withdrawn there, by message.
local function cancel_unstarted(q, id, ttl, now)
  local job_key = q.prefix .. 'job:' .. id
  local job = redis.call('HMGET', job_key, 'state', 'key', 'attempt', 'wf', 'priority',
    'parked', 'ahead', 'queue')
  local state, key, wid = job[1], job[2], job[4]
  if state ~= 'waiting' and state ~= 'delayed' and state ~= 'pending' then
    return state or 'unknown'
  end
  if job[8] and state == 'waiting' then
    outbox_push(q, { op = 'cancel', queue = job[8], wf = wid, id = id })
    return 'forwarded'
  end
  if state == 'delayed' then
    redis.call('ZREM', q.delayed, id)
  elseif job[6] then  -- parked by a limit
    local parked = q.prefix .. 'parked:' .. job[6]
    if redis.call('LREM', parked, 1, id) == 1 then redis.call('DECR', q.prefix .. 'limited') end
    if redis.call('EXISTS', parked) == 0 then redis.call('SREM', q.prefix .. 'parking', job[6]) end
  elseif state == 'waiting' and not remove_waiting(q, id, job[5]) and key then
    -- Not in circulation: held in its key's line.
    if redis.call('LREM', q.prefix .. 'key:' .. key, 1, id) == 1 then
      redis.call('DECR', q.prefix .. 'held')
    end
  end
  pass_turn(q, job[7])
  to_cancelled(q, id, job[3], wid, ttl, now)
  return OK
end

-- A run that failed: schedule the next attempt after `retry_in` ms, or (-1) file the
-- job in the failed store. Returns true when a retry was scheduled.
local function end_failed_run(q, id, attempt, reason, message, retry_in, now)
  if retry_in >= 0 then
    local job_key = q.prefix .. 'job:' .. id
    redis.call('HSET', job_key, 'state', 'delayed', 'reason', reason, 'error', message)
    -- A retry may run at a priority of its own (e.g. ahead of new work).
    local boost = redis.call('HGET', job_key, 'retry_priority')
    if boost then redis.call('HSET', job_key, 'priority', boost) end
    redis.call('ZADD', q.delayed, now + retry_in, id)
    note('retry_scheduled', id, attempt)
    return true
  end
  to_failed_store(q, id, reason, message, attempt, now)
  return false
end

-- Versioned state (the layout of Dapr's Redis state store): a hash per entry with
-- `data` (JSON text) and `version` (1 on the first save, +1 on each). A write is
-- {op, key name, value, etag}: op 'save' or 'delete'; etag '' writes unconditionally,
-- '0' only if the entry is absent, else it must equal the current version. Returns the
-- index of the first write that cannot apply, with the entry's current version (false
-- if absent) or, for a key holding something else than a state entry, its type. Every
-- write is checked before any is applied, so that a call applies all or none.
local function check_state(writes)
  for i, w in ipairs(writes) do
    local kind = redis.call('TYPE', w[2]).ok
    if kind ~= 'hash' and kind ~= 'none' then return i, false, kind end
    if w[4] ~= '' then
      local version = redis.call('HGET', w[2], 'version')
      if (version or '0') ~= w[4] then return i, version end
    end
  end
  return nil
end

-- Apply checked writes; returns the new version of each (0 for a delete).
local function apply_state(writes)
  local versions = {}
  for i, w in ipairs(writes) do
    if w[1] == 'delete' then
      redis.call('DEL', w[2])
      versions[i] = 0
    else
      versions[i] = redis.call('HINCRBY', w[2], 'version', 1)
      redis.call('HSET', w[2], 'data', w[3])
    end
  end
  return versions
end

-- Fencing: only the delivery holding the current token may end or extend a job.
-- A repeat of the call that already ended this delivery is ALREADY_DONE.
-- Returns that code, the job's attempt number, its workflow's id (false if none), the
-- scopes whose slots it holds (false if none; see includes/limits.lua) and whether it
-- was asked to abort.
local function check_lease(key, token)
  local job = redis.call('HMGET', key, 'state', 'token', 'attempt', 'wf', 'holds', 'abort')
  local state = job[1]
  if job[2] ~= token then return LEASE_LOST, job[3] end
  if state == 'active' then return OK, job[3], job[4], job[5], job[6] end
  if state == 'completed' or state == 'failed' or state == 'delayed' then
    return ALREADY_DONE, job[3]
  end
  return LEASE_LOST, job[3]
end
