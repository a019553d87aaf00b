--[[ enqueue: add jobs to the queue's wait list (new -> waiting).
KEYS[1] wait      LIST of job ids, pushed on the left, fetched from the right
KEYS[2] marker    ZSET with one member, woken workers block on it
KEYS[3] events    STREAM and pub/sub channel of job events
KEYS[4] stats     HASH of counters
ARGV[1] prefix    "rw:{queue}:" (job hashes are prefix .. "job:" .. id)
ARGV[2] queue     queue name
ARGV[3..]         pairs: job id, job document (JSON)
Returns a list with one code per job: OK, or DUPLICATE when the id already exists
(a retried enqueue whose first reply was lost is applied once).
]]
-- @include common
local prefix, queue = ARGV[1], ARGV[2]
local now = now_ms()
local codes, added = {}, {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local key = prefix .. 'job:' .. id
  if redis.call('EXISTS', key) == 1 then
    codes[#codes + 1] = DUPLICATE
  else
    -- attempt, token and losses start absent, read as 0: less for the server to write.
    redis.call('HSET', key, 'data', ARGV[i + 1], 'state', 'waiting', 'enqueued_at', now)
    added[#added + 1] = id
    note('enqueued', id, 0)
    codes[#codes + 1] = OK
  end
end
if #added > 0 then
  call_chunked('LPUSH', KEYS[1], added)
  redis.call('ZADD', KEYS[2], 0, 'm')
  redis.call('HINCRBY', KEYS[4], 'enqueued', #added)
end
flush_events(KEYS[3], queue, now)
return codes
