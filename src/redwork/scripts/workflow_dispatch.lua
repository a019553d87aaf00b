--[[ workflow_dispatch: workflows' jobs released at their workflows' home (another
queue) join this queue (new -> waiting): outbox messages 'run' (see
includes/workflow.lua), handed over by a relay. A job keeps `wf` and `wf_home`: its end
is told to the home by message. Handing a message over again adds nothing.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] marker    ZSET wake-up marker
KEYS[3] events    STREAM and channel of job events
KEYS[4] stats     HASH of counters
KEYS[5] outbox    LIST of this queue's messages for others
ARGV[1] prefix    ARGV[2] queue
ARGV[3..]         messages, JSON {op: 'run', queue, home, wf, id, data, key?, priority?,
                  retry_priority?, inputs?}, in order
Returns { one reply per message: OK, or DUPLICATE when the job exists already (sent
before; or a job of that id that is not this node: the node then ends failed, reason
duplicate_id, by message) ; messages written to this queue's outbox }.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[2] }
local queue = ARGV[2]
local now = now_ms()
local outbox_before = redis.call('LLEN', KEYS[5])
local replies, added = {}, 0
for i = 3, #ARGV do
  local m = cjson.decode(ARGV[i])
  local job_key = q.prefix .. 'job:' .. m.id
  if redis.call('EXISTS', job_key) == 1 then
    if redis.call('HGET', job_key, 'wf') ~= m.wf then
      outbox_push(q, { op = 'ended', queue = m.home, wf = m.wf, id = m.id, seq = 1,
        outcome = 'failed', reason = 'duplicate_id', attempt = 0,
        error = 'queue ' .. queue .. ' holds another job with this id' })
    end
    replies[#replies + 1] = DUPLICATE
  else
    local fields = { 'data', m.data, 'enqueued_at', now, 'wf', m.wf, 'wf_home', m.home,
      'state', 'waiting' }
    add_field(fields, 'key', m.key or '')
    add_field(fields, 'priority', m.priority or '')
    add_field(fields, 'inputs', m.inputs or '')
    if m.retry_priority then  -- 0 is a priority of its own here
      fields[#fields + 1], fields[#fields + 2] = 'retry_priority', m.retry_priority
    end
    redis.call('HSET', job_key, unpack(fields))
    note('enqueued', m.id, 0)
    if admit(q, m.id, m.key or false, false) then
      push_waiting(q, { m.id }, { m.priority })
    end
    added = added + 1
    replies[#replies + 1] = OK
  end
end
if added > 0 then
  redis.call('ZADD', KEYS[2], 0, 'm')
  redis.call('HINCRBY', KEYS[4], 'enqueued', added)
end
flush_events(KEYS[3], queue, now)
return { replies, redis.call('LLEN', KEYS[5]) - outbox_before }
