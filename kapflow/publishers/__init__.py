"""Where recorded outputs leave kapflow: publishers of the transactional outbox."""
