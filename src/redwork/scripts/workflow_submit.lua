--[[ workflow_submit: store a workflow and all its nodes at once (new -> waiting for a
node without dependencies, new -> pending for the others). The caller has checked that
the graph is acyclic and that every dependency is a node of it.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] marker    ZSET wake-up marker
KEYS[3] events    STREAM and channel of job events
KEYS[4] stats     HASH of counters
KEYS[5] index     ZSET workflow id -> time submitted (ms)
ARGV[1] prefix    ARGV[2] queue
ARGV[3] id        the workflow's id
ARGV[4] name      a label ('' for none)
ARGV[5] ttl       seconds the workflow is kept once it has ended
ARGV[6..]         ten fields per node, in submit order: job id, job document (JSON),
                  key ('' for none), dependencies and dependants (comma-separated ids,
                  '' for none), pass ('1': given its dependencies' results, else ''),
                  collect ('1': a dependency that does not succeed still resolves it),
                  priority (0-9), priority of its retries ('' for the same), the queue
                  it runs in ('' for this one; else it is a proxy here, and its job is
                  sent to its queue through the outbox when released: see
                  includes/workflow.lua)
Returns OK; DUPLICATE when the workflow exists (a resubmission adds nothing); or the id
of a node that exists already as a job (nothing is added).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[2] }
local queue, wid = ARGV[2], ARGV[3]
local wf_key = q.prefix .. 'wf:' .. wid
if redis.call('EXISTS', wf_key) == 1 then return DUPLICATE end
local FIELDS = 10
for i = 6, #ARGV, FIELDS do
  if redis.call('EXISTS', q.prefix .. 'job:' .. ARGV[i]) == 1 then return ARGV[i] end
end
local now = now_ms()
local nodes, roots, priorities, here = {}, {}, {}, 0
for i = 6, #ARGV, FIELDS do
  local id, key, needs = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  local fields = { 'data', ARGV[i + 1], 'enqueued_at', now, 'wf', wid }
  add_field(fields, 'key', key)
  add_field(fields, 'needs', needs)
  add_field(fields, 'next', ARGV[i + 4])
  add_field(fields, 'pass', ARGV[i + 5])
  add_field(fields, 'collect', ARGV[i + 6])
  add_field(fields, 'priority', ARGV[i + 7])
  add_field(fields, 'queue', ARGV[i + 9])
  if ARGV[i + 8] ~= '' then  -- 0 is a priority of its own here
    fields[#fields + 1], fields[#fields + 2] = 'retry_priority', ARGV[i + 8]
  end
  if needs == '' then
    add_field(fields, 'state', 'waiting')
    if ARGV[i + 5] ~= '' then add_field(fields, 'inputs', '[]') end
    redis.call('HSET', q.prefix .. 'job:' .. id, unpack(fields))
    if ARGV[i + 9] ~= '' then
      dispatch_node(q, id, ARGV[i + 9])
    elseif admit(q, id, key ~= '' and key or false, false) then
      roots[#roots + 1] = id
      priorities[#roots] = ARGV[i + 7]
    end
    note('enqueued', id, 0)
  else
    local deps = 1
    for _ in string.gmatch(needs, ',') do deps = deps + 1 end
    add_field(fields, 'state', 'pending')
    add_field(fields, 'deps', tostring(deps))
    redis.call('HSET', q.prefix .. 'job:' .. id, unpack(fields))
    note('pending', id, 0)
  end
  nodes[#nodes + 1] = id
  if ARGV[i + 9] == '' then here = here + 1 end
end
redis.call('HSET', wf_key, 'status', 'pending', 'total', #nodes, 'ended', 0, 'succeeded', 0,
  'failed', 0, 'skipped', 0, 'cancelled', 0, 'created_at', now, 'ttl', ARGV[5], 'name', ARGV[4])
call_chunked('RPUSH', wf_key .. '/nodes', nodes)
redis.call('ZADD', KEYS[5], now, wid)
if #roots > 0 then
  push_waiting(q, roots, priorities, false)
  redis.call('ZADD', KEYS[2], 0, 'm')
end
-- A node of another queue counts there, once its job is sent.
redis.call('HINCRBY', KEYS[4], 'enqueued', here)
note('workflow_submitted', wid, 0)
flush_events(KEYS[3], queue, now)
return OK
