-- Drops a region's tombstones older than the grace: a deleted record's version, kept in
-- its kind's version hash so that versions only grow, is forgotten once its delete is
-- past the change stream's reach. One still at the version noted (nothing written
-- since) is removed; one written since is left alone. Either way its note goes.
-- And the stream's entries older than the grace go too, so its reach is the grace (an
-- instance further behind finds a hole and reloads the region): an idle region's
-- stream holds nothing, however busy it was.
--
-- KEYS: 1 the region's tombstones (sorted set: score = when the delete was made, in
--       ms of the Redis clock; member = "<version hash key>\n<id>\n<version>"), 2 the
--       region's change stream, then the version hashes the members may name
-- ARGV: 1 the grace in ms, 2 most tombstones to look at
-- Returns the version hash key of each tombstone dropped (so the caller counts them by
-- kind), and whether notes remain past the grace ({keys, more}).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[2]))
local known = {}
for i = 3, #KEYS do
  known[KEYS[i]] = true
end
local dropped = {}
for _, member in ipairs(due) do
  local versions, id, version = string.match(member, '^(.-)\n(.-)\n(%d+)$')
  if versions and known[versions] and redis.call('HGET', versions, id) == version then
    redis.call('HDEL', versions, id)
    dropped[#dropped + 1] = versions
  end
  redis.call('ZREM', KEYS[1], member)
end
local more = 0
if #due == tonumber(ARGV[2]) then
  more = 1
end
-- Entry ids are the Redis clock's ms when added.
redis.call('XTRIM', KEYS[2], 'MINID', tostring(now - tonumber(ARGV[1])))
return {dropped, more}
