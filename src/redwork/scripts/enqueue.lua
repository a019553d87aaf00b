--[[ enqueue: add jobs to the queue (new -> waiting, or new -> delayed for a job given a
delay). A keyed job whose key's head is still in circulation waits behind it, in order
(see release_holds in common); a delayed keyed job joins its key's line when it is due.
KEYS[1] wait      LIST of job ids of priority 0, pushed on the left, fetched from the right
KEYS[2] marker    ZSET with one member, woken workers block on it
KEYS[3] events    STREAM and pub/sub channel of job events
KEYS[4] stats     HASH of counters
KEYS[5] delayed   ZSET job id -> due time (ms)
KEYS[6] schedules HASH schedule name -> the last tick (ms) claimed (periodic jobs)
ARGV[1] prefix    "rw:{queue}:" (job hashes are prefix .. "job:" .. id)
ARGV[2] queue     queue name
ARGV[3] idem_ms   how long an idempotency key is remembered
ARGV[4] ttl       seconds a job replaced under its uniqueness key is kept (cancelled)
ARGV[5] schedule  '' or, for the tick of a periodic job, the schedule's name
ARGV[6] tick      the tick's time (ms): the call claims it, and applies only if no
                  later or equal tick of the schedule was claimed (one job per tick, however
                  many schedulers try); a claim may come with no job (a skipped tick)
ARGV[7..]         nine fields per job: id, job document (JSON), key, idempotency key,
                  priority (0-9), priority of retries, delay in ms, uniqueness key,
                  uniqueness policy ('reject' or 'replace'); '' for each one not given
Returns {} when the tick was claimed already (nothing is added), else one reply per job:
OK; DUPLICATE when the id already exists (a retried enqueue whose first reply was lost
is applied once); or the id of the job that kept this one out
(nothing is added): the job enqueued with the same idempotency key within idem_ms, or
the job queued or running under the same uniqueness key (with policy 'replace', a job
that has not started is cancelled instead, and this one takes its place). A call with
an id that is not 1-128 of A-Z a-z 0-9 _ . : - is refused with an error, adding nothing.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[2], delayed = KEYS[5] }
local queue, idem_ms, ttl = ARGV[2], ARGV[3], ARGV[4]
-- A foreign producer's bad id would be stored, then never fetched: refuse the whole
-- call before anything is written.
for i = 7, #ARGV, 9 do
  if not is_job_id(ARGV[i]) then
    local shown = string.format('%q', string.sub(ARGV[i], 1, 140))
    return redis.error_reply('ERR invalid job id ' .. shown ..
      ': use 1 to 128 characters from A-Z a-z 0-9 _ . : -')
  end
end
if ARGV[5] ~= '' then
  local last = redis.call('HGET', KEYS[6], ARGV[5])
  if last and tonumber(last) >= tonumber(ARGV[6]) then return {} end
  redis.call('HSET', KEYS[6], ARGV[5], ARGV[6])
end
local now = now_ms()
local replies, added, priorities = {}, {}, {}
local enqueued, delayed, replaced = 0, 0, 0

-- Jobs of this call to push on the wait list at the end, by id: a job of this call
-- replaced by a later one under its uniqueness key must not be pushed.
local batched = {}

for i = 7, #ARGV, 9 do
  local id, key, idem = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  local priority, retry_priority, delay = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local unique, policy = ARGV[i + 7], ARGV[i + 8]
  local job_key = q.prefix .. 'job:' .. id
  local idem_key = idem ~= '' and q.prefix .. 'idem:' .. idem
  local reply = OK
  if redis.call('EXISTS', job_key) == 1 then
    reply = DUPLICATE
  else
    reply = idem_key and redis.call('GET', idem_key) or OK
    if reply == OK and unique ~= '' then
      local holder = unique_holder(q, unique)
      if holder and policy == 'replace' and cancel_unstarted(q, holder, ttl, now) == OK then
        replaced = replaced + 1
        if batched[holder] then added[batched[holder]] = false end
        holder = false
      end
      reply = holder or OK
    end
  end
  if reply == OK then
    if idem_key then redis.call('SET', idem_key, id, 'PX', idem_ms) end
    -- attempt, token and losses start absent, read as 0: less for the server to write.
    local fields = { 'data', ARGV[i + 1], 'state', 'waiting', 'enqueued_at', now }
    add_field(fields, 'key', key)
    add_field(fields, 'priority', priority)
    -- 0 is a priority of its own here (absent means: the job's own).
    if retry_priority ~= '' then
      fields[#fields + 1], fields[#fields + 2] = 'retry_priority', retry_priority
    end
    if unique ~= '' then
      add_field(fields, 'unique', unique)
      redis.call('SET', q.prefix .. 'unique:' .. unique, id)
    end
    if delay ~= '' then
      local due = now + tonumber(delay)
      fields[4] = 'delayed'
      add_field(fields, 'due_at', string.format('%d', due))  -- tostring would give 1e+14
      redis.call('HSET', job_key, unpack(fields))
      redis.call('ZADD', q.delayed, due, id)
      note('delayed', id, 0)
      delayed = delayed + 1
    else
      redis.call('HSET', job_key, unpack(fields))
      if key == '' or admit(q, id, key, false) then
        added[#added + 1] = id
        priorities[#added] = priority
        batched[id] = #added
      end
      note('enqueued', id, 0)
    end
    enqueued = enqueued + 1
  end
  replies[#replies + 1] = reply
end
local waiting, waiting_priorities = {}, {}
for i, id in ipairs(added) do
  if id then
    waiting[#waiting + 1] = id
    waiting_priorities[#waiting] = priorities[i]
  end
end
if #waiting > 0 then push_waiting(q, waiting, waiting_priorities, false) end
-- A delayed job wakes an idle worker too, so that it waits for the new due time.
if #waiting + delayed > 0 then redis.call('ZADD', q.marker, 0, 'm') end
if enqueued > 0 then redis.call('HINCRBY', KEYS[4], 'enqueued', enqueued) end
if replaced > 0 then redis.call('HINCRBY', KEYS[4], 'cancelled', replaced) end
flush_events(KEYS[3], queue, now)
return replies
