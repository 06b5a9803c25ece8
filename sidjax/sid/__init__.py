"""sidjax.sid."""
