"""Registry helpers: which model to score with, and how two registered models are judged."""
