-- The daily spend cap, one rule for every way of spending coins: store.py prepends this file to settle.lua
-- (gifts) and pool.lua (pledges), so both check and count it the same way, atomically with the debit.
-- The rule's home is ledger/rules.py (own_spend_limit, change_own_spend_limit); this is its Lua reading.
--
-- A viewer's own cap is stored as 'cap', or 'cap|requested|effective_ms' while a raised or removed cap waits
-- out the cooling-off: from effective_ms on, the requested cap is the one in force. 0 means no cap.
local function spend_cap_own(stored, now_ms)
  if not stored then return 0 end
  local cap, requested, effective_ms = string.match(stored, '^(%d+)|(%d+)|(%d+)$')
  if not cap then return tonumber(stored) or 0 end
  if now_ms >= tonumber(effective_ms) then return tonumber(requested) end
  return tonumber(cap)
end

-- The cap in force for a viewer: the lower of the global cap and the viewer's own (0: none).
local function spend_cap(global_cap, own_stored, now_ms)
  local cap, own = global_cap, spend_cap_own(own_stored, now_ms)
  if own > 0 and (cap == 0 or own < cap) then cap = own end
  return cap
end

-- Whether spending `coins` more on a day that already saw `spent` stays within `cap`.
local function spend_cap_allows(cap, spent, coins)
  return cap == 0 or spent + coins <= cap
end
