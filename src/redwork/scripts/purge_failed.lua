--[[ purge_failed: delete jobs from the failed store, for good (failed -> gone).
KEYS[1] failed    ZSET of failed job ids
KEYS[2] events    STREAM and channel of job events
ARGV[1] prefix    ARGV[2] queue
ARGV[3..]         job ids; none means every failed job
Returns the number of jobs deleted.
]]
-- @include common
local prefix, queue = ARGV[1], ARGV[2]
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', KEYS[1], 0, -1) end
local deleted = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('DEL', prefix .. 'job:' .. id)
    note('purged', id, 0)
    deleted = deleted + 1
  end
end
flush_events(KEYS[2], queue, now_ms())
return deleted
