--[[ workflow_report: a workflow's node that runs in another queue has ended (its proxy
here: waiting -> completed, failed or cancelled, releasing or skipping its dependants
as a node of this queue would) or was sent back from the failed store there (-> waiting
again, reopening the workflow): the outbox messages 'ended' and 'reopen' (see
includes/workflow.lua), handed over by a relay. Each carries the node's sequence
number: one already applied is dropped, one that comes before its predecessor waits.
KEYS[1] events    STREAM and channel of job events
KEYS[2] wait      LIST of waiting job ids (a dependant released here joins it)
KEYS[3] marker    ZSET wake-up marker
ARGV[1] prefix    ARGV[2] queue
ARGV[3] message   JSON {op: 'ended', queue, wf, id, seq, outcome, attempt, result?,
                  reason?, error?} or {op: 'reopen', queue, wf, id, seq}
Returns OK; DUPLICATE (applied before, or the workflow has expired: nothing to do); or
LATER (an earlier message about the node has not been applied yet).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[2], marker = KEYS[3] }
local queue, m = ARGV[2], cjson.decode(ARGV[3])
local job_key = q.prefix .. 'job:' .. m.id
local node = redis.call('HMGET', job_key, 'queue', 'wf_seq')
if not node[1] then return DUPLICATE end  -- expired with its workflow (or not a proxy)
local applied = tonumber(node[2] or 0)
if m.seq <= applied then return DUPLICATE end
if m.seq > applied + 1 then return LATER end
local now = now_ms()
redis.call('HSET', job_key, 'wf_seq', m.seq)
if m.op == 'reopen' then
  redis.call('HSET', job_key, 'state', 'waiting')
  redis.call('HDEL', job_key, 'result', 'reason', 'error', 'finished_at')
  note('requeued', m.id, 0)
  reopen_node(q, m.wf, m.id)
else
  local state = ({ succeeded = 'completed', failed = 'failed', cancelled = 'cancelled' })[m.outcome]
  redis.call('HDEL', job_key, 'result', 'reason', 'error')
  local fields = { 'state', state, 'finished_at', now, 'attempt', m.attempt }
  if m.result then fields[#fields + 1], fields[#fields + 2] = 'result', m.result end
  if m.reason then fields[#fields + 1], fields[#fields + 2] = 'reason', m.reason end
  if m.error then fields[#fields + 1], fields[#fields + 2] = 'error', m.error end
  redis.call('HSET', job_key, unpack(fields))
  local wf_key = q.prefix .. 'wf:' .. m.wf
  if redis.call('HGET', wf_key, 'status') == 'pending' then
    redis.call('HSET', wf_key, 'status', 'running', 'started_at', now)
    note('workflow_running', m.wf, 0)
  end
  note(state, m.id, m.attempt)
  announce_end(q.prefix, m.id, state)
  node_ended(q, m.wf, m.id, m.outcome, now)
end
flush_events(KEYS[1], queue, now)
return OK
