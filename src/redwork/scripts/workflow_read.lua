--[[ workflow_read: a consistent view of a workflow and its nodes (reads only).
KEYS[1] workflow  HASH wf:<id> (its node list is wf:<id>/nodes)
ARGV[1] prefix
Returns {} when there is no such workflow, else { workflow hash (flat field/value
list), then per node in submit order: id, state, dependencies (comma-separated),
result, reason, error, job document, progress, queue (set for a node that runs in
another queue: its state here is the last its queue told) } (false for an absent field).
]]
local prefix, wf_key = ARGV[1], KEYS[1]
local out = { redis.call('HGETALL', wf_key) }
if #out[1] == 0 then return {} end
for _, id in ipairs(redis.call('LRANGE', wf_key .. '/nodes', 0, -1)) do
  local n = redis.call('HMGET', prefix .. 'job:' .. id, 'state', 'needs', 'result', 'reason',
    'error', 'data', 'progress', 'queue')
  out[#out + 1] = id
  for i = 1, 8 do out[#out + 1] = n[i] end
end
return out
