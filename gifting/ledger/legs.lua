-- Apply journal legs as the caller built them (ledger/rules.py): store.py prepends this file to the scripts
-- that move money outside the gift batch, so a script's balance changes and its journal entry are one text.
--
-- legs: 'ledger debit credit amount' joined by '|'; balance_keys: ledger name -> its balances hash (KEYS).
local function apply_legs(balance_keys, legs)
  for ledger, debit, credit, amount in string.gmatch(legs, '([^ |]+) ([^ |]+) ([^ |]+) (%d+)') do
    local key = balance_keys[ledger]
    redis.call('HINCRBY', key, debit, -tonumber(amount))
    redis.call('HINCRBY', key, credit, tonumber(amount))
  end
end
