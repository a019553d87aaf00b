--[[ workflow_cancel: cancel a workflow (-> cancelled): every node that has not started
is cancelled (see cancel_unstarted in common); running nodes finish, but release
nothing. The workflow ends when its last running node does.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] delayed   ZSET of delayed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
ARGV[1] prefix    ARGV[2] queue
ARGV[3] id        the workflow's id
ARGV[4] ttl       seconds a cancelled job is kept (nodes are kept with their workflow)
A node released to another queue is withdrawn there (by message, see
includes/workflow.lua) if it has not started by then.
Returns the number of nodes cancelled (or being withdrawn), or the workflow's status when it had ended
already ('unknown' when there is no such workflow).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], delayed = KEYS[2], marker = KEYS[3] }
local queue, wid = ARGV[2], ARGV[3]
local wf_key = q.prefix .. 'wf:' .. wid
local status = redis.call('HGET', wf_key, 'status')
if status ~= 'pending' and status ~= 'running' then return status or 'unknown' end
local now = now_ms()
-- Set first: the nodes cancelled below then skip nothing (they are all being cancelled).
redis.call('HSET', wf_key, 'status', 'cancelled')
note('workflow_cancelling', wid, 0)
local cancelled, forwarded = 0, 0
for _, id in ipairs(redis.call('LRANGE', wf_key .. '/nodes', 0, -1)) do
  local reply = cancel_unstarted(q, id, ARGV[4], now)
  if reply == OK then
    cancelled = cancelled + 1
  elseif reply == 'forwarded' then
    forwarded = forwarded + 1  -- counted by its own queue when withdrawn
  end
end
if cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'cancelled', cancelled) end
flush_events(KEYS[4], queue, now)
return cancelled + forwarded
