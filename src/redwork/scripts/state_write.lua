--[[ state_write: save or delete versioned state entries, all or none; fenced when
called from a running job (a delivery that lost its lease cannot write).
KEYS[1]           the job's hash when fenced, else unused ('' is not a key: pass any)
KEYS[2..]         the state entries, one per write
ARGV[1] token     the job delivery's fencing token, or '' for an unfenced write
ARGV[2..]         triples, one per write: op ('save' or 'delete'), value (JSON, '' for a
                  delete), etag ('' = unconditional, else the version expected)
Returns { OK, version1, version2, ... } (0 for a delete); { CONFLICT, index of the
first write that cannot apply, its current version or '', and the type of what the key
holds when it is not a state entry }; or { LEASE_LOST } (nothing is written in either
case).
]]
-- @include common
if ARGV[1] ~= '' and check_lease(KEYS[1], ARGV[1]) ~= OK then return { LEASE_LOST } end
local writes = {}
for i = 2, #ARGV, 3 do
  writes[#writes + 1] = { ARGV[i], KEYS[#writes + 2], ARGV[i + 1], ARGV[i + 2] }
end
local bad, version, kind = check_state(writes)
if bad then return { CONFLICT, bad, version or '', kind } end
local reply = apply_state(writes)
table.insert(reply, 1, OK)
return reply
