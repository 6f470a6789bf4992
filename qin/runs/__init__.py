"""How stages run: the stage table, content-addressed outputs, run records, file mechanics."""
