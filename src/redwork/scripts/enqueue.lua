--[[ enqueue: add jobs to the queue (new -> waiting). A keyed job whose key's head is
still in circulation waits behind it, in order (see release_key in common).
KEYS[1] wait      LIST of job ids, pushed on the left, fetched from the right
KEYS[2] marker    ZSET with one member, woken workers block on it
KEYS[3] events    STREAM and pub/sub channel of job events
KEYS[4] stats     HASH of counters
ARGV[1] prefix    "rw:{queue}:" (job hashes are prefix .. "job:" .. id)
ARGV[2] queue     queue name
ARGV[3] idem_ms   how long an idempotency key is remembered
ARGV[4..]         quadruples: job id, job document (JSON), key ('' for none),
                  idempotency key ('' for none)
Returns one reply per job: OK; DUPLICATE when the id already exists (a retried enqueue
whose first reply was lost is applied once); or, when the idempotency key was seen
within idem_ms, the id of the job enqueued with it (nothing is added).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[2] }
local queue, idem_ms = ARGV[2], ARGV[3]
local now = now_ms()
local replies, added = {}, {}
local enqueued = 0
for i = 4, #ARGV, 4 do
  local id, key, idem = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  local job_key = q.prefix .. 'job:' .. id
  local reply = OK
  if redis.call('EXISTS', job_key) == 1 then
    reply = DUPLICATE
  elseif idem ~= '' and not redis.call('SET', q.prefix .. 'idem:' .. idem, id, 'NX', 'PX', idem_ms) then
    reply = redis.call('GET', q.prefix .. 'idem:' .. idem)
  else
    -- attempt, token and losses start absent, read as 0: less for the server to write.
    if key == '' then
      redis.call('HSET', job_key, 'data', ARGV[i + 1], 'state', 'waiting', 'enqueued_at', now)
      added[#added + 1] = id
    else
      redis.call('HSET', job_key, 'data', ARGV[i + 1], 'state', 'waiting', 'enqueued_at', now,
        'key', key)
      if admit(q, id, key, false) then added[#added + 1] = id end
    end
    note('enqueued', id, 0)
    enqueued = enqueued + 1
  end
  replies[#replies + 1] = reply
end
if #added > 0 then
  call_chunked('LPUSH', KEYS[1], added)
  redis.call('ZADD', KEYS[2], 0, 'm')
end
if enqueued > 0 then redis.call('HINCRBY', KEYS[4], 'enqueued', enqueued) end
flush_events(KEYS[3], queue, now)
return replies
