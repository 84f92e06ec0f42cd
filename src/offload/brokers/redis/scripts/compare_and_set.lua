-- compare_and_set: set a register if it holds the expected value (or is unset, or
-- already holds the new one).
-- KEYS: [1] the register (P:{%register:<name>}): hash of `value` and `until`.
-- ARGV: [1] now, [2] '1' if a value is expected, '0' if unset is, [3] the expected
--       value, [4] the new value, [5] until, [6] TTL in ms (key lapse, Redis time).
-- Returns: the value held after the call, nil if unset.
local held = redis.call('HMGET', KEYS[1], 'value', 'until')
local current = held[1]
if current and tonumber(held[2]) <= tonumber(ARGV[1]) then
  current = false -- lapsed by the broker's clock: unset
end
local expected = ARGV[2] == '1' and ARGV[3] or false
if current ~= expected and current ~= ARGV[4] then
  return current
end
redis.call('HSET', KEYS[1], 'value', ARGV[4], 'until', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return ARGV[4]
