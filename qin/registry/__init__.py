"""The model registry, as the library sees it: what a registry must do and its records (protocol), where a
version came from (provenance), the register stage's result (registration), the promotion rules and alias
moves (promotion), how two versions are judged on new data (judge), the model card (card), and which model
to score with (resolve)."""
