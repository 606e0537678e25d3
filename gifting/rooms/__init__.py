"""Rooms and pools in Valkey, and the room script (announce.lua)."""
