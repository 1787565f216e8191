-- Claims a car park id for a region. Ids are unique in the deployment while each
-- region's keys live in their own slot, so this one key per id is the guard.
-- The key holds the owning region, or "deleted:<version>" once the car park was
-- deleted: a car park registered again, in any region, must start above every version
-- it ever had, since replicas order an id's changes by version across all regions.
--
-- KEYS: 1 the id's owner key
-- ARGV: 1 the claiming region
-- Returns {1, floor} when claimed (floor: the version it was deleted at, or 0),
--         {0, owner} when another region holds it.
local owner = redis.call('GET', KEYS[1])
local floor = 0
if owner then
  local deleted = string.match(owner, '^deleted:(%d+)$')
  if deleted then
    floor = tonumber(deleted)
  elseif owner ~= ARGV[1] then
    return {0, owner}
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return {1, tostring(floor)}
