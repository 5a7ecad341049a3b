"""Adapters of pspy to other libraries (an ORM's database backend, ...)."""
