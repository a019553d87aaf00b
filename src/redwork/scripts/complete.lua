--[[ complete: record results (active -> completed), for a batch of jobs.
KEYS[1] active    ZSET of leased job ids
KEYS[2] events    STREAM and channel of job events
KEYS[3] stats     HASH of counters
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a completed job and its result are kept
ARGV[4..]         triples: job id, fencing token, result (JSON)
Returns one code per job: OK, LEASE_LOST (fenced: another delivery owns the job,
nothing is written) or ALREADY_DONE (this delivery was already recorded).
]]
-- @include common
local prefix, queue, ttl = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local codes, done = {}, {}
local fenced = 0
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  local key = prefix .. 'job:' .. id
  local code, attempt = check_lease(key, ARGV[i + 1])
  if code == OK then
    redis.call('HSET', key, 'state', 'completed', 'result', ARGV[i + 2], 'finished_at', now)
    redis.call('EXPIRE', key, ttl)
    done[#done + 1] = id
    note('completed', id, attempt)
    announce_end(prefix, id, 'completed')
  elseif code == LEASE_LOST then
    fenced = fenced + 1
  end
  codes[#codes + 1] = code
end
if #done > 0 then
  call_chunked('ZREM', KEYS[1], done)
  redis.call('HINCRBY', KEYS[3], 'completed', #done)
  local minute = prefix .. 'done:' .. math.floor(now / 60000)
  redis.call('INCRBY', minute, #done)
  redis.call('EXPIRE', minute, 3600)
end
if fenced > 0 then redis.call('HINCRBY', KEYS[3], 'fenced', fenced) end
flush_events(KEYS[2], queue, now)
return codes
