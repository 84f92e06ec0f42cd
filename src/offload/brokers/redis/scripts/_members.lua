-- The members of the fixed-width lexical indexes (`ready`, `jobs`, `created`), prepended
-- to every script of this directory, before `_lib.lua` (see
-- offload/brokers/redis/_scripts.py). `enqueue_one.lua` takes these alone: they are
-- all it shares with the others, and the rest of `_lib.lua` would cost it more Redis
-- time to define, on each call, than it spends on its own work.

-- Ready order within one priority: due time (ms), then the queue's enqueue sequence.
local function ready_member(r, id)
  return string.format('%015.0f%012.0f', math.max(0, math.floor(r.d * 1000)), r.q) .. id
end

-- Listing order: enqueue time (ms), then sequence; the member of `jobs`.
local function listing_member(r, id)
  return string.format('%015.0f%012.0f', r.n, r.q) .. id
end

-- Creation order (for time ranges): `created_at` in ms, then listing order; the member
-- of `created`. Clamped to the fixed width, like `created_prefix` in keys.py.
local function created_member(r, id)
  local ms = math.min(math.max(math.floor(r.c * 1000), 0), 1e15 - 1)
  return string.format('%015.0f', ms) .. listing_member(r, id)
end

