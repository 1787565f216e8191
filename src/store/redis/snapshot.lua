-- A consistent read of some records of one kind: each record's parts and version as
-- of one instant, so a snapshot never pairs a part with another write's version.
-- KEYS: 1 the kind's version hash, 2.. the kind's part hashes
-- ARGV: the ids
-- Returns {versions, part 1 values, part 2 values, ...}, each in id order (false where
-- absent).
local out = {redis.call('HMGET', KEYS[1], unpack(ARGV))}
for i = 2, #KEYS do
  out[i] = redis.call('HMGET', KEYS[i], unpack(ARGV))
end
return out
