--[[ workflow_report: workflows' nodes that run in other queues have ended (each one's
proxy here: waiting -> completed, failed or cancelled, releasing or skipping its
dependants as a node of this queue would) or were sent back from the failed store there
(-> waiting again, reopening the workflow): outbox messages 'ended' and 'reopen' (see
includes/workflow.lua), handed over by a relay, in order. Each carries the node's
sequence number: one already applied is dropped, one that comes before its predecessor
waits.
KEYS[1] events    STREAM and channel of job events
KEYS[2] wait      LIST of waiting job ids (a dependant released here joins it)
KEYS[3] marker    ZSET wake-up marker
KEYS[4] outbox    LIST of this queue's messages for others
ARGV[1] prefix    ARGV[2] queue
ARGV[3..]         messages, JSON {op: 'ended', queue, wf, id, seq, outcome, attempt,
                  result?, reason?, error?} or {op: 'reopen', queue, wf, id, seq}
Returns { one reply per message: OK; DUPLICATE (applied before, or the workflow has
expired: nothing to do); or LATER (an earlier message about the node has not been
applied yet) ; messages written to this queue's outbox }.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[2], marker = KEYS[3] }
local queue = ARGV[2]
local now = now_ms()
local outbox_before = redis.call('LLEN', KEYS[4])

local function apply(m)
  local job_key = q.prefix .. 'job:' .. m.id
  local node = redis.call('HMGET', job_key, 'queue', 'wf_seq')
  if not node[1] then return DUPLICATE end  -- expired with its workflow (or not a proxy)
  local applied = tonumber(node[2] or 0)
  if m.seq <= applied then return DUPLICATE end
  if m.seq > applied + 1 then return LATER end
  redis.call('HSET', job_key, 'wf_seq', m.seq)
  if m.op == 'reopen' then
    redis.call('HSET', job_key, 'state', 'waiting')
    redis.call('HDEL', job_key, 'result', 'reason', 'error', 'finished_at')
    note('requeued', m.id, 0)
    reopen_node(q, m.wf, m.id)
    return OK
  end
  local state = ({ succeeded = 'completed', failed = 'failed', cancelled = 'cancelled' })[m.outcome]
  redis.call('HDEL', job_key, 'result', 'reason', 'error')
  local fields = { 'state', state, 'finished_at', now, 'attempt', m.attempt or 0 }
  if m.result then fields[#fields + 1], fields[#fields + 2] = 'result', m.result end
  if m.reason then fields[#fields + 1], fields[#fields + 2] = 'reason', m.reason end
  if m.error then fields[#fields + 1], fields[#fields + 2] = 'error', m.error end
  redis.call('HSET', job_key, unpack(fields))
  local wf_key = q.prefix .. 'wf:' .. m.wf
  if redis.call('HGET', wf_key, 'status') == 'pending' then
    redis.call('HSET', wf_key, 'status', 'running', 'started_at', now)
    note('workflow_running', m.wf, 0)
  end
  note(state, m.id, m.attempt or 0)
  announce_end(q.prefix, m.id, state)
  node_ended(q, m.wf, m.id, m.outcome, now)
  return OK
end

local replies = {}
for i = 3, #ARGV do replies[#replies + 1] = apply(cjson.decode(ARGV[i])) end
flush_events(KEYS[1], queue, now)
return { replies, redis.call('LLEN', KEYS[4]) - outbox_before }
