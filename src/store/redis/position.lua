-- Where a region's change stream stands: its change counter and its last entry's id,
-- read together so a snapshot taken after them can be replayed from exactly there.
-- KEYS: 1 change counter, 2 change stream
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then
  id = last[1][1]
end
return {n, id}
