"""Privacy layer (off-chain): secure aggregation by masking (:mod:`.secagg`, with
:mod:`.shamir`, :mod:`.quantize` and :mod:`.prg`), CKKS homomorphic aggregation (:mod:`.ckks`)
and differential privacy (:mod:`.dp`). Nothing is imported here: a job loads only its own
mode's module, so one mode's dependencies never load for another."""
