-- Workflows: jobs that wait for other jobs of the same queue (their dependencies).
-- A node's hash carries `wf` (its workflow's id), `deps` (dependencies not resolved
-- yet, while it is pending), `needs` (its dependencies, in order, comma-separated),
-- `next` (its dependants), `pass` (set when it is given its dependencies' results) and
-- `collect` (set when a dependency that did not succeed still counts as resolved, its
-- error passed in its place). The workflow's hash `wf:<id>` counts ended nodes; its
-- list `wf:<id>/nodes` names them in submit order. Every function here runs inside the
-- transition that ends a node, so a dependant is released exactly once, atomically
-- with the completion that releases it.

-- Workflows across queues. A workflow is recorded in one queue, its home: `wf:<id>`
-- and a hash per node live there. A node that runs in another queue is a proxy at home
-- (field `queue`: where it runs) and, once released, a job of its own queue (fields
-- `wf` and `wf_home`). A script touches one cluster slot, so the two sides talk through
-- outboxes: the LIST `outbox` of a queue holds messages (JSON, see docs/protocol.md)
-- that its transitions wrote for another queue, atomically with them; a relay
-- (redwork.workflow.relay) hands each to the script of its queue, then removes it.
-- A message may be handed over more than once, so each applies once: 'run' adds the
-- job only if its id is new, 'cancel' withdraws a job only if it has not started,
-- 'ended' and 'reopen' carry the node's sequence number and apply in order.

local function outbox_push(q, message)
  redis.call('RPUSH', q.prefix .. 'outbox', cjson.encode(message))
end

local function queue_of(q) return string.match(q.prefix, '{(.*)}:$') end

local function node_ids(csv)
  local ids = {}
  if csv then
    for id in string.gmatch(csv, '[^,]+') do ids[#ids + 1] = id end
  end
  return ids
end

-- What a dependant is given for a dependency: its result, or, for one that did not
-- succeed, {"$failed": {...}} (the worker turns it into a JobFailed).
local function input_of(q, dep)
  local d = redis.call('HMGET', q.prefix .. 'job:' .. dep, 'state', 'result', 'reason', 'error')
  if d[1] == 'completed' then return d[2] end
  return cjson.encode({ ['$failed'] = { job = dep, state = d[1] or 'unknown',
    reason = d[3] or d[1] or 'unknown', error = d[4] or '' } })
end

-- A proxy whose dependencies are resolved (or a root): its job joins its own queue.
local function dispatch_node(q, id, node_queue)
  local job = redis.call('HMGET', q.prefix .. 'job:' .. id, 'data', 'wf', 'key', 'priority',
    'retry_priority', 'inputs')
  outbox_push(q, { op = 'run', queue = node_queue, home = queue_of(q), wf = job[2], id = id,
    data = job[1], key = job[3] or nil, priority = job[4] or nil,
    retry_priority = job[5] or nil, inputs = job[6] or nil })
end

-- A pending node whose dependencies are all resolved joins the queue.
local function release_node(q, id)
  local job_key = q.prefix .. 'job:' .. id
  local node = redis.call('HMGET', job_key, 'pass', 'needs', 'key', 'priority', 'queue')
  if node[1] then
    local inputs = {}
    for _, dep in ipairs(node_ids(node[2])) do inputs[#inputs + 1] = input_of(q, dep) end
    redis.call('HSET', job_key, 'state', 'waiting', 'inputs', '[' .. table.concat(inputs, ',') .. ']')
  else
    redis.call('HSET', job_key, 'state', 'waiting')
  end
  redis.call('HDEL', job_key, 'deps')
  note('ready', id, 0)
  if node[5] then
    dispatch_node(q, id, node[5])
  elseif admit(q, id, node[3] or false, false) then
    push_waiting(q, { id }, { node[4] })
    redis.call('ZADD', q.marker, 0, 'm')
  end
end

local function workflow_key(q, wid) return q.prefix .. 'wf:' .. wid end

-- Every node has ended: the workflow gets its final status, and expires (nodes in the
-- failed store excepted) `ttl` seconds later.
local function finish_workflow(q, wid, now)
  local wf_key = workflow_key(q, wid)
  local wf = redis.call('HMGET', wf_key, 'status', 'failed', 'skipped', 'cancelled', 'ttl')
  local status = 'succeeded'
  if wf[1] == 'cancelled' then
    status = 'cancelled'
  elseif tonumber(wf[2] or 0) + tonumber(wf[3] or 0) + tonumber(wf[4] or 0) > 0 then
    status = 'failed'
  end
  redis.call('HSET', wf_key, 'status', status, 'finished_at', now)
  local ttl = tonumber(wf[5])
  local nodes = redis.call('LRANGE', wf_key .. '/nodes', 0, -1)
  for _, id in ipairs(nodes) do
    local job_key = q.prefix .. 'job:' .. id
    local node = redis.call('HMGET', job_key, 'state', 'queue')
    -- A failed job stays in the failed store; a proxy's job is in its own queue's.
    if node[1] ~= 'failed' or node[2] then redis.call('EXPIRE', job_key, ttl) end
  end
  redis.call('EXPIRE', wf_key, ttl)
  redis.call('EXPIRE', wf_key .. '/nodes', ttl)
  note('workflow_' .. status, wid, 0)
  redis.call('PUBLISH', wf_key, status)
end

-- Count `n` nodes of the workflow (of `total` nodes) as ended with `outcome` (a counter
-- of its hash).
local function count_ended(q, wid, total, outcome, n, now)
  if n == 0 then return end
  local wf_key = workflow_key(q, wid)
  redis.call('HINCRBY', wf_key, outcome, n)
  if redis.call('HINCRBY', wf_key, 'ended', n) >= total then finish_workflow(q, wid, now) end
end

-- Node `id` of workflow `wid` has ended: 'succeeded', 'failed' or 'cancelled'. Its
-- pending dependants count it as resolved (released when it was the last), or, when it
-- did not succeed and they do not collect, are skipped, and theirs after them. A job
-- whose workflow is at home elsewhere tells it by message. Returns true when the job is
-- kept (and expires) with its workflow, false when it expires on its own.
local function node_ended(q, wid, id, outcome, now)
  local job_key = q.prefix .. 'job:' .. id
  local home = redis.call('HGET', job_key, 'wf_home')
  if home then
    local job = redis.call('HMGET', job_key, 'result', 'reason', 'error', 'attempt')
    outbox_push(q, { op = 'ended', queue = home, wf = wid, id = id,
      seq = redis.call('HINCRBY', job_key, 'wf_seq', 1), outcome = outcome,
      result = job[1] or nil, reason = job[2] or nil, error = job[3] or nil,
      attempt = tonumber(job[4] or 0) })
    return false
  end
  local wf = redis.call('HMGET', workflow_key(q, wid), 'status', 'total')
  if not wf[1] then return false end  -- expired: a lone job now
  local cancelled, total = wf[1] == 'cancelled', tonumber(wf[2])
  local skipped = 0
  local walk = { { id, outcome == 'succeeded' } }
  local i = 1
  while i <= #walk and not cancelled do
    local from, ok = walk[i][1], walk[i][2]
    for _, dep in ipairs(node_ids(redis.call('HGET', q.prefix .. 'job:' .. from, 'next'))) do
      local dep_key = q.prefix .. 'job:' .. dep
      local d = redis.call('HMGET', dep_key, 'state', 'collect')
      if d[1] == 'pending' then
        if ok or d[2] then
          if redis.call('HINCRBY', dep_key, 'deps', -1) <= 0 then release_node(q, dep) end
        else
          redis.call('HSET', dep_key, 'state', 'skipped', 'reason', 'dependency_failed',
            'error', 'dependency ' .. from .. ' did not succeed', 'finished_at', now)
          redis.call('HDEL', dep_key, 'deps')
          note('skipped', dep, 0)
          announce_end(q.prefix, dep, 'skipped')
          skipped = skipped + 1
          walk[#walk + 1] = { dep, false }
        end
      end
    end
    i = i + 1
  end
  count_ended(q, wid, total, 'skipped', skipped, now)
  count_ended(q, wid, total, outcome, 1, now)
  return true
end

-- A failed node sent back to the queue: its workflow runs again, and the dependants it
-- had skipped (with theirs) wait for it once more, unless another dependency of theirs
-- still did not succeed. A cancelled workflow stays cancelled: the node runs alone.
local function reopen_node(q, wid, id)
  local job_key = q.prefix .. 'job:' .. id
  local home = redis.call('HGET', job_key, 'wf_home')
  if home then
    outbox_push(q, { op = 'reopen', queue = home, wf = wid, id = id,
      seq = redis.call('HINCRBY', job_key, 'wf_seq', 1) })
    return
  end
  local wf_key = workflow_key(q, wid)
  local wf = redis.call('HMGET', wf_key, 'status', 'finished_at')
  if not wf[1] then return end  -- expired: a lone job now
  if wf[2] then  -- it had ended: keep it (and the results its nodes need) from expiring
    redis.call('HDEL', wf_key, 'finished_at')
    redis.call('PERSIST', wf_key)
    redis.call('PERSIST', wf_key .. '/nodes')
    for _, node in ipairs(redis.call('LRANGE', wf_key .. '/nodes', 0, -1)) do
      redis.call('PERSIST', q.prefix .. 'job:' .. node)
    end
  end
  redis.call('HINCRBY', wf_key, 'failed', -1)
  redis.call('HINCRBY', wf_key, 'ended', -1)
  if wf[1] == 'cancelled' then return end
  if wf[1] ~= 'running' then
    redis.call('HSET', wf_key, 'status', 'running')
    note('workflow_running', wid, 0)
  end
  local restored = 0
  local walk = { id }
  local i = 1
  while i <= #walk do
    for _, dep in ipairs(node_ids(redis.call('HGET', q.prefix .. 'job:' .. walk[i], 'next'))) do
      local dep_key = q.prefix .. 'job:' .. dep
      local d = redis.call('HMGET', dep_key, 'state', 'needs', 'collect', 'reason')
      if d[1] == 'skipped' and d[4] == 'dependency_failed' then
        local unresolved, blocked = 0, false
        for _, need in ipairs(node_ids(d[2])) do
          local state = redis.call('HGET', q.prefix .. 'job:' .. need, 'state')
          if state == 'failed' or state == 'skipped' or state == 'cancelled' then
            blocked = blocked or not d[3]
          elseif state ~= 'completed' then
            unresolved = unresolved + 1
          end
        end
        if not blocked then
          redis.call('HSET', dep_key, 'state', 'pending', 'deps', unresolved)
          redis.call('HDEL', dep_key, 'reason', 'error', 'finished_at')
          note('pending', dep, 0)
          restored = restored + 1
          walk[#walk + 1] = dep
        end
      end
    end
    i = i + 1
  end
  if restored > 0 then
    redis.call('HINCRBY', wf_key, 'skipped', -restored)
    redis.call('HINCRBY', wf_key, 'ended', -restored)
  end
end
