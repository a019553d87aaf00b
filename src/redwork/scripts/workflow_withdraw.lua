--[[ workflow_withdraw: cancel a workflow's node in this queue that has not started
(-> cancelled), asked by its workflow's home (the outbox message 'cancel', see
includes/workflow.lua): its end is told to the home like any other. A node that has
started runs to its end; one that has ended stays as it is.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] delayed   ZSET of delayed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a cancelled job is kept
ARGV[4] message   JSON {op: 'cancel', queue, wf, id}
Returns OK, or the state that kept the job from being cancelled ('unknown': no such job).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], delayed = KEYS[2], marker = KEYS[3] }
local queue, m = ARGV[2], cjson.decode(ARGV[4])
local now = now_ms()
local reply = cancel_unstarted(q, m.id, ARGV[3], now)
if reply == OK then redis.call('HINCRBY', KEYS[5], 'cancelled', 1) end
flush_events(KEYS[4], queue, now)
return reply
