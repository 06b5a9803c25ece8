"""sidjax.eval."""
