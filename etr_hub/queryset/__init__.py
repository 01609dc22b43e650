"""Expert query sets: the (query, response) pairs where the expert beats the meta model (eq. 3)."""
