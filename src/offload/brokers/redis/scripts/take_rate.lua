-- take_rate: one GCRA step (offload.limits.gcra does the same sums in Python).
-- KEYS: [1] the limit's key (P:{%rate:<key>}:tat), hash-tagged by itself.
-- ARGV: [1] now, [2] limit, [3] per_s, [4] epsilon (s).
-- Returns: '0' if a token was taken, else the seconds until one is free (a string:
--          Redis would truncate a Lua number to an integer).
local now, limit, per = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = per / limit
local tolerance = per - interval
local start = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local wait = start - now - tolerance
if wait > tonumber(ARGV[4]) then
  return string.format('%.17g', wait)
end
local tat = start + interval
-- The key lapses (Redis time) once idle; a stale value would read as idle anyway.
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return '0'
