"""sidjax.decode."""
