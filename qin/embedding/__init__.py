"""The embed stage's methods: PCA, the learned fusion, and how an embedding is judged."""
