--[[ workflow_dispatch: a workflow's node released at its workflow's home (another
queue) joins this queue (new -> waiting): the outbox message 'run' (see
includes/workflow.lua), handed over by a relay. The job keeps `wf` and `wf_home`: its
end is told to the home by message. Handing the message over again adds nothing.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] marker    ZSET wake-up marker
KEYS[3] events    STREAM and channel of job events
KEYS[4] stats     HASH of counters
ARGV[1] prefix    ARGV[2] queue
ARGV[3] message   JSON {op: 'run', queue, home, wf, id, data, key?, priority?,
                  retry_priority?, inputs?}
Returns OK, or DUPLICATE when the job exists already (sent before; or a job of that id
that is not this node: the node then ends failed, reason duplicate_id, by message).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[2] }
local queue, m = ARGV[2], cjson.decode(ARGV[3])
local job_key = q.prefix .. 'job:' .. m.id
local now = now_ms()
if redis.call('EXISTS', job_key) == 1 then
  if redis.call('HGET', job_key, 'wf') ~= m.wf then
    outbox_push(q, { op = 'ended', queue = m.home, wf = m.wf, id = m.id, seq = 1,
      outcome = 'failed', reason = 'duplicate_id', attempt = 0,
      error = 'queue ' .. queue .. ' holds another job with this id' })
  end
  return DUPLICATE
end
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
  redis.call('ZADD', KEYS[2], 0, 'm')
end
redis.call('HINCRBY', KEYS[4], 'enqueued', 1)
flush_events(KEYS[3], queue, now)
return OK
