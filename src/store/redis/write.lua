-- One atomic write of one or more records, of any kinds, in one region: compare every
-- record's version first, and only if all are current store their parts (or delete
-- them), count each change in the region and append it to the region's change stream.
-- The business rules ran in Rust already; this script only makes the write atomic.
-- Most calls carry one record (a car park's reports); a reservation carries itself and
-- the slot counts it takes, all or none.
--
-- A record's write may carry several states, oldest first (several reports on one car
-- park decided together): each becomes a version and a stream entry of its own, so
-- every instance's watchers see each; the last is what stays.
--
-- KEYS: 1 the region's change counter, 2 the region's change stream, 3 the region's
--       tombstones (sorted set), then per record its kind's version hash and part
--       hashes (every part, in part order)
-- ARGV: 1 stream MAXLEN (approx.), 2 number of records, then per record: kind, op
--       ("put" | "del"), id, expected version, floor (a version the new one must
--       exceed besides the current one; 0 if none), number of parts P, number of
--       states S (0 for "del"), whether its tombstone is compacted (1 | 0), the P part
--       names, then per state, per part, its stored value ("" leaves the part
--       unchanged)
-- Returns {1, n, version...} when written (n: the last change's number in the region;
--         a version per record), or {0, i, current version} when record i (from 1) is
--         not at its expected version, or a delete or partial put of it found no
--         record: then nothing was written.
--
-- Every entry of a kind carries every part's field (empty where unchanged), so a
-- stream node stores the field names once for all its entries.
local records = {}
local key, arg = 4, 3
for r = 1, tonumber(ARGV[2]) do
  local parts, states = tonumber(ARGV[arg + 5]), tonumber(ARGV[arg + 6])
  local rec = {kind = ARGV[arg], op = ARGV[arg + 1], id = ARGV[arg + 2],
    expected = tonumber(ARGV[arg + 3]), floor = tonumber(ARGV[arg + 4]),
    parts = parts, states = states, compacted = ARGV[arg + 7] == '1',
    names = arg + 8, values = arg + 8 + parts, versions = KEYS[key], first = key + 1}
  rec.current = tonumber(redis.call('HGET', rec.versions, rec.id) or '0')
  if rec.current ~= rec.expected then
    return {0, r, rec.current}
  end
  local partial = false
  for i = 1, parts do
    if ARGV[rec.values + i - 1] == '' then
      partial = true
    end
  end
  if (rec.op == 'del' or partial) and redis.call('HEXISTS', KEYS[rec.first], rec.id) == 0 then
    return {0, r, rec.current}
  end
  records[r] = rec
  key = key + 1 + parts
  arg = rec.values + states * parts
end
local n = 0
local reply = {1, 0}
for r, rec in ipairs(records) do
  local id, parts, states = rec.id, rec.parts, rec.states
  local version = math.max(rec.current, rec.floor)
  local entry = {'n', 0, 'k', rec.kind, 'op', rec.op, 'id', id, 'v', 0}
  for i = 1, parts do
    entry[10 + 2 * i - 1] = ARGV[rec.names + i - 1]
    entry[10 + 2 * i] = ''
  end
  if rec.op == 'del' then
    for i = 1, parts do
      redis.call('HDEL', KEYS[rec.first + i - 1], id)
    end
    states = 1
  end
  for s = 0, states - 1 do
    version = version + 1
    for i = 1, parts do
      local value = ''
      if rec.op == 'put' then
        value = ARGV[rec.values + s * parts + i - 1]
      end
      if value ~= '' then
        redis.call('HSET', KEYS[rec.first + i - 1], id, value)
      end
      entry[10 + 2 * i] = value
    end
    n = redis.call('INCR', KEYS[1])
    entry[2] = n
    entry[10] = version
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(entry))
  end
  -- The version outlives a delete (a tombstone), so versions of an id only grow; a
  -- compacted kind's tombstone is noted with when it was made, for compact.lua.
  redis.call('HSET', rec.versions, id, version)
  if rec.op == 'del' and rec.compacted then
    local time = redis.call('TIME')
    local ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    redis.call('ZADD', KEYS[3], ms, rec.versions .. '\n' .. id .. '\n' .. version)
  end
  reply[2 + r] = version
end
reply[2] = n
return reply
