-- Flow control: how many jobs may run at once (concurrency) and start per period (rate)
-- in a scope: the whole queue ('queue'), one task ('task:<name>'), or each group of jobs
-- that share a `group` in their document ('group', counted per group as 'group:<g>').
-- The hash `limits` holds the specs, scope -> "<concurrency> <rate> <period ms>" (0: no
-- such limit). fetch checks them for every job it is about to lease; a job that would
-- exceed one is parked in the list `parked:<scope>`, where no worker holds it, and
-- returns to the wait list (at the front: it was first) when a slot of the scope frees
-- or, for a rate, when the time in the ZSET `throttled` comes. `running:<scope>` (SET)
-- names the jobs holding a slot, `started:<scope>` (ZSET, member id:token, score ms)
-- the starts within the last period. A job records in `holds` the scopes whose slots it
-- took, and releases them whenever it stops running: completed, failed, retried, handed
-- back, or recovered after its worker was lost. While parked it has `parked` (the scope);
-- one returned from a parked list has `ahead` (the scope it left), so that it does not
-- queue behind the jobs parked after it, and so that, should it not take the room it
-- was given (cancelled first, or held back by another scope), it passes the turn to the
-- next parked job of that scope: a scope with room never keeps jobs parked.
-- `limited` counts parked jobs; the SET `parking` names the scopes with parked jobs.

local function limit_specs(q)
  local raw = redis.call('HGETALL', q.prefix .. 'limits')
  if #raw == 0 then return nil end
  local specs = {}
  for i = 1, #raw, 2 do
    local c, r, p = string.match(raw[i + 1], '^(%d+) (%d+) (%d+)$')
    if c then specs[raw[i]] = { tonumber(c), tonumber(r), tonumber(p) } end
  end
  return specs
end

-- The scopes limiting a job, each { name, spec }: its queue's, its task's, its group's.
local function scopes_of(specs, data)
  local scopes = {}
  if specs['queue'] then scopes[#scopes + 1] = { 'queue', specs['queue'] } end
  -- With a queue-wide limit alone, the document need not be read.
  if next(specs, nil) == 'queue' and next(specs, 'queue') == nil then return scopes end
  local ok, doc = pcall(cjson.decode, data)
  if ok and type(doc) == 'table' then
    local task_spec = type(doc.task) == 'string' and specs['task:' .. doc.task]
    if task_spec then scopes[#scopes + 1] = { 'task:' .. doc.task, task_spec } end
    if specs['group'] and type(doc.group) == 'string' then
      scopes[#scopes + 1] = { 'group:' .. doc.group, specs['group'] }
    end
  end
  return scopes
end

-- The spec of a scope name ('group:<g>' is limited by 'group').
local function spec_of(specs, name)
  if string.sub(name, 1, 6) == 'group:' then return specs['group'] end
  return specs[name]
end

-- Starts within the scope's period, after dropping older ones.
local function recent_starts(q, name, spec, now)
  local started = q.prefix .. 'started:' .. name
  redis.call('ZREMRANGEBYSCORE', started, '-inf', now - spec[3])
  return redis.call('ZCARD', started)
end

-- What fetch knows of each scope during one call, read once per scope and kept up to
-- date as the call starts and parks jobs: whether jobs are parked, how many run, how
-- many started within the period, and the starts to record when the call ends.
local scope_counts = {}

local function counts_of(q, name, spec, now)
  local c = scope_counts[name]
  if not c then
    c = {
      parked = redis.call('EXISTS', q.prefix .. 'parked:' .. name) == 1,
      running = spec[1] > 0 and redis.call('SCARD', q.prefix .. 'running:' .. name) or 0,
      started = spec[2] > 0 and recent_starts(q, name, spec, now) or 0,
      starts = {},
      spec = spec,
    }
    scope_counts[name] = c
  end
  return c
end

-- Take the job's slots and starts if every scope has room; else return the scope that
-- holds it back and, for a rate, when the scope next has room (ms).
local function try_start(q, id, token, scopes, ahead, now)
  for _, scope in ipairs(scopes) do
    local name, spec = scope[1], scope[2]
    local c = counts_of(q, name, spec, now)
    -- A job the scope has just given room to goes ahead of the jobs parked after it.
    if (c.parked and ahead ~= name) or (spec[1] > 0 and c.running >= spec[1]) then
      return name
    end
    if spec[2] > 0 and c.started >= spec[2] then
      local oldest = redis.call('ZRANGE', q.prefix .. 'started:' .. name, 0, 0, 'WITHSCORES')
      return name, (tonumber(oldest[2]) or now) + spec[3]
    end
  end
  local holds = {}
  for _, scope in ipairs(scopes) do
    local name, spec = scope[1], scope[2]
    local c = scope_counts[name]
    if spec[1] > 0 then
      redis.call('SADD', q.prefix .. 'running:' .. name, id)
      c.running = c.running + 1
      holds[#holds + 1] = name
    end
    if spec[2] > 0 then
      c.started = c.started + 1
      c.starts[#c.starts + 1] = now
      c.starts[#c.starts + 1] = id .. ':' .. token
    end
  end
  return nil, nil, holds
end

-- Record the starts of rate-limited scopes that this fetch call made.
local function record_starts(q)
  for name, c in pairs(scope_counts) do
    if #c.starts > 0 then
      call_chunked('ZADD', q.prefix .. 'started:' .. name, c.starts, 2)
      redis.call('PEXPIRE', q.prefix .. 'started:' .. name, c.spec[3])
    end
  end
end

-- Park a job under a scope: last in line, or first (`front`) when the scope had just
-- given it room.
local function park(q, id, name, front, due)
  if scope_counts[name] then scope_counts[name].parked = true end
  redis.call(front and 'LPUSH' or 'RPUSH', q.prefix .. 'parked:' .. name, id)
  redis.call('HSET', q.prefix .. 'job:' .. id, 'parked', name)
  redis.call('HDEL', q.prefix .. 'job:' .. id, 'ahead')
  redis.call('SADD', q.prefix .. 'parking', name)
  redis.call('INCR', q.prefix .. 'limited')
  if due then redis.call('ZADD', q.prefix .. 'throttled', due, name) end
end

-- Return up to n jobs parked under a scope to the front of the wait list.
local function unpark(q, name, n)
  local list = q.prefix .. 'parked:' .. name
  local moved, priorities = {}, {}
  while #moved < n do
    local id = redis.call('LPOP', list)
    if not id then break end
    local job_key = q.prefix .. 'job:' .. id
    redis.call('HDEL', job_key, 'parked')
    redis.call('HSET', job_key, 'ahead', name)
    moved[#moved + 1] = id
    priorities[#moved] = redis.call('HGET', job_key, 'priority')
  end
  if #moved == 0 then return 0 end  -- none parked: the common case on a job's end
  redis.call('DECRBY', q.prefix .. 'limited', #moved)
  push_waiting(q, moved, priorities, true)
  redis.call('ZADD', q.marker, 0, 'm')
  if redis.call('EXISTS', list) == 0 then redis.call('SREM', q.prefix .. 'parking', name) end
  return #moved
end

-- A job stops running (for now or for good): free its slots, each to a parked job.
-- (`holds` stays on the job: a slot freed twice is freed once, SREM says so.)
local function release_slots(q, id, holds)
  if not holds then return end
  for _, name in ipairs(cjson.decode(holds)) do
    if redis.call('SREM', q.prefix .. 'running:' .. name, id) == 1 then unpark(q, name, 1) end
  end
end

-- Scopes whose rate has room again: their parked jobs return, as many as there is room.
local function unthrottle(q, specs, now)
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', q.prefix .. 'throttled', '-inf', now)) do
    redis.call('ZREM', q.prefix .. 'throttled', name)
    local spec = spec_of(specs, name)
    local room = spec and spec[2] - recent_starts(q, name, spec, now) or math.huge
    unpark(q, name, room)
    if spec and redis.call('EXISTS', q.prefix .. 'parked:' .. name) == 1 then
      -- More are parked than there is room for: look again when the window has moved on.
      local oldest = redis.call('ZRANGE', q.prefix .. 'started:' .. name, 0, 0, 'WITHSCORES')
      redis.call('ZADD', q.prefix .. 'throttled', (tonumber(oldest[2]) or now) + spec[3], name)
    end
  end
end

-- A job given room by a scope (`ahead`) that will not take it: the next one may.
local function pass_turn(q, ahead)
  if ahead then unpark(q, ahead, 1) end
end
