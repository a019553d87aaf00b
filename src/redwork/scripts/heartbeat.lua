--[[ heartbeat: extend the leases of jobs a worker is still running (active -> active).
KEYS[1] active    ZSET job id -> lease deadline (ms)
ARGV[1] prefix
ARGV[2] lease_ms  new lease length, counted from now
ARGV[3..]         pairs: job id, fencing token
Returns { ids whose lease was lost (the worker must stop treating them as its own),
          ids of jobs asked to abort (cancel.lua publishes them too; this catches a
          message the worker missed) }.
]]
-- @include common
local prefix = ARGV[1]
local deadline = now_ms() + tonumber(ARGV[2])
local lost, leases, aborted = {}, {}, {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if check_lease(prefix .. 'job:' .. id, ARGV[i + 1]) == OK then
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    if redis.call('HEXISTS', prefix .. 'job:' .. id, 'abort') == 1 then
      aborted[#aborted + 1] = id
    end
  else
    lost[#lost + 1] = id
  end
end
if #leases > 0 then call_chunked('ZADD', KEYS[1], leases, 2, 'XX') end
return { lost, aborted }
