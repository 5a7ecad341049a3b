"""Data grants: per-principal rights inside one shared database, enforced by the database."""
