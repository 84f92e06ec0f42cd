-- join: record a chord member's outcome (once); every outcome once the group is complete.
-- KEYS: [1] the group's members (P:{%chord:<group id>}:members), hash-tagged by the group.
-- ARGV: [1] member id, [2] its zero-padded index followed by its outcome, [3] total,
--       [4] the record's TTL (ms): the broker's retention, renewed by each member.
-- Returns: nil while members are missing, else every stored value (in any order).
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  return false
end
return redis.call('HVALS', KEYS[1])
