-- record_attempt: append one attempt record to a job's history, keeping the newest.
-- KEYS: [1] the job's history list (`P:{%attempts:<job id>}`, see keys.py).
-- ARGV: [1] lease token, [2] record (JSON), [3] records kept, [4] TTL in ms.
-- Entries are "<n>\n<token>\n<record>": `n` numbers every record the job ever had (so
-- the first kept one tells how many were dropped), `token` makes a repeat a no-op.
-- Returns: 1, or 0 if the newest record already has this token.
local newest = redis.call('LINDEX', KEYS[1], -1)
local count = 0
if newest then
  local n, token = string.match(newest, '^(%d+)\n([^\n]*)\n')
  if token == ARGV[1] then
    return 0
  end
  count = tonumber(n) or 0
end
redis.call('RPUSH', KEYS[1], (count + 1) .. '\n' .. ARGV[1] .. '\n' .. ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
