"""Training pairs, probe sets and their tokenisation."""
