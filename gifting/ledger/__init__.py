"""The double-entry ledger: pure rules (rules.py), Lua scripts (*.lua), the Redis adapter (store.py), audit."""
