"""Class semantics: WordNet graphs and text embeddings of class names."""
