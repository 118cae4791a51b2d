"""Built-in hpcem protocols, one per file."""
