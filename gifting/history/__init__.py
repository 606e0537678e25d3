"""The ledger's history in PostgreSQL: schema migrations and the journal archive."""
