"""sidjax.nn."""
