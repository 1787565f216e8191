-- One write of one record of any kind, atomic: compare its version, store the parts it
-- sets (or delete it), count the change in the region and append it to the region's
-- change stream. The business rules ran in Rust already; this script only makes the
-- write atomic.
--
-- A write may carry several states of the record, oldest first (several reports on one
-- car park decided together): each becomes a version and a stream entry of its own, so
-- every instance's watchers see each; the last is what stays.
--
-- KEYS: 1 the kind's version hash, 2 the region's change counter, 3 the region's
--       change stream, 4.. the kind's part hashes (every part, in part order)
-- ARGV: 1 kind, 2 op ("put" | "del"), 3 id, 4 expected version, 5 floor: a version the
--       new one must exceed besides the current one (0 if none), 6 stream MAXLEN
--       (approx.), 7 number of states (0 for "del"), then the part names, then per
--       state, per part, its stored value ("" leaves the part unchanged)
-- Returns {1, n, version} when written (n: the last change's number in the region),
--         {0, current version} when the record is not at the expected version, or a
--         delete or partial put found no record.
--
-- Every entry of a kind carries every part's field (empty where unchanged), so a
-- stream node stores the field names once for all its entries.
local id = ARGV[3]
local current = tonumber(redis.call('HGET', KEYS[1], id) or '0')
if current ~= tonumber(ARGV[4]) then
  return {0, current}
end
local op = ARGV[2]
local parts = #KEYS - 3
local states = tonumber(ARGV[7])
local values = 7 + parts
local partial = false
for i = 1, parts do
  if ARGV[values + i] == '' then
    partial = true
  end
end
if (op == 'del' or partial) and redis.call('HEXISTS', KEYS[4], id) == 0 then
  return {0, current}
end
local version = math.max(current, tonumber(ARGV[5]))
local n = 0
local entry = {'n', 0, 'k', ARGV[1], 'op', op, 'id', id, 'v', 0}
for i = 1, parts do
  entry[10 + 2 * i - 1] = ARGV[7 + i]
  entry[10 + 2 * i] = ''
end
if op == 'del' then
  for i = 1, parts do
    redis.call('HDEL', KEYS[3 + i], id)
  end
  states = 1
end
for s = 0, states - 1 do
  version = version + 1
  for i = 1, parts do
    local value = ARGV[values + s * parts + i] or ''
    if value ~= '' then
      redis.call('HSET', KEYS[3 + i], id, value)
    end
    entry[10 + 2 * i] = value
  end
  n = redis.call('INCR', KEYS[2])
  entry[2] = n
  entry[10] = version
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', unpack(entry))
end
-- The version outlives a delete (a tombstone), so versions of an id only grow.
redis.call('HSET', KEYS[1], id, version)
return {1, n, version}
