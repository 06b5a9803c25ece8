"""sidjax.train."""
