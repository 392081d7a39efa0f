"""dbfleet: one declarative fleet spec for PostgreSQL, MongoDB and Redis, kept true by an operator."""

__version__ = "0.1.0"
