--[[ retry_failed: send jobs from the failed store back to the queue (failed -> waiting),
with a fresh attempt budget. A job with a uniqueness key takes it back; one whose key
another job holds now stays in the failed store (there is at most one of a key queued). Their last error stays on the job until it runs again.
A keyed job whose key has a head in circulation waits first in its key's line. A
workflow's node reopens its workflow: the nodes it had skipped wait for it again.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] failed    ZSET of failed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
ARGV[1] prefix    ARGV[2] queue
ARGV[3..]         job ids; none means every failed job
Returns the number of jobs sent back.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[3] }
local queue = ARGV[2]
local now = now_ms()
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', KEYS[2], 0, -1) end
local moved = 0
-- Keyed jobs go back in their key's line in enqueue order, ahead of the key's later
-- jobs: the oldest becomes the head if the key has none.
local by_key, keys_seen = {}, {}
for _, id in ipairs(ids) do
  -- Entries buried by fetch as raw bytes (@raw-N) are not jobs and cannot run again.
  local job_key = q.prefix .. 'job:' .. id
  local unique = redis.call('HGET', job_key, 'unique')
  -- A job whose uniqueness key another job holds now stays in the failed store.
  local free = not unique or not unique_holder(q, unique)
  if free and string.sub(id, 1, 1) ~= '@' and redis.call('ZREM', KEYS[2], id) == 1 then
    if unique then redis.call('SET', q.prefix .. 'unique:' .. unique, id) end
    redis.call('HSET', job_key, 'state', 'waiting', 'attempt', 0, 'losses', 0)
    redis.call('HDEL', job_key, 'abort', 'ahead')
    local job = redis.call('HMGET', job_key, 'key', 'enqueued_at', 'wf', 'priority')
    if job[3] then reopen_node(q, job[3], id) end
    if job[1] then
      if not by_key[job[1]] then
        by_key[job[1]] = {}
        keys_seen[#keys_seen + 1] = job[1]
      end
      table.insert(by_key[job[1]], { tonumber(job[2] or 0), moved, id, job[4] })
    else
      push_waiting(q, { id }, { job[4] }, false)
    end
    note('requeued', id, 0)
    moved = moved + 1
  end
end
for _, key in ipairs(keys_seen) do
  local jobs = by_key[key]
  -- By enqueue time; within one millisecond, as they were given (failure order).
  table.sort(jobs, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  local first = 1
  if redis.call('HEXISTS', q.prefix .. 'keys', key) == 0 then
    admit(q, jobs[1][3], key, true)
    push_waiting(q, { jobs[1][3] }, { jobs[1][4] }, false)
    first = 2
  end
  for j = #jobs, first, -1 do admit(q, jobs[j][3], key, true) end
end
if moved > 0 then redis.call('ZADD', KEYS[3], 0, 'm') end
flush_events(KEYS[4], queue, now)
return moved
