-- One write of one car park, atomic: compare its version, store its new state, count
-- the change in the region and append it to the region's change stream.
-- The business rules ran in Rust already; this script only makes the write atomic.
--
-- KEYS: 1 parks hash, 2 live hash, 3 version hash, 4 change counter, 5 change stream
-- ARGV: 1 op ("put" | "live" | "del"), 2 car park id, 3 expected version,
--       4 car park JSON ("put"), 5 live JSON ("put", "live"), 6 stream MAXLEN (approx.),
--       7 floor: the version the id was deleted at in any region (claim.lua), which the
--         new version must exceed (0 if none)
-- Returns {1, n, version} when written (n: the change's number in the region),
--         {0, current version} when the version did not match,
--         {-1, current version} when "live"/"del" found no car park.
local id = ARGV[2]
local current = tonumber(redis.call('HGET', KEYS[3], id) or '0')
if current ~= tonumber(ARGV[3]) then
  return {0, current}
end
local op = ARGV[1]
if op ~= 'put' and redis.call('HEXISTS', KEYS[1], id) == 0 then
  return {-1, current}
end
local version = math.max(current, tonumber(ARGV[7])) + 1
if op == 'put' then
  redis.call('HSET', KEYS[1], id, ARGV[4])
end
if op == 'del' then
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
else
  redis.call('HSET', KEYS[2], id, ARGV[5])
end
-- The version outlives a delete (a tombstone), and the floor carries it into other
-- regions, so versions of an id only grow.
redis.call('HSET', KEYS[3], id, version)
local n = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*',
  'n', n, 'op', op, 'id', id, 'v', version, 'park', ARGV[4], 'live', ARGV[5])
return {1, n, version}
