"""A trained model as a self-contained package, and requests checked at the door."""
