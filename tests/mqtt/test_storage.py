"""The telemetry batch ids already stored (mqtt/storage.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from fleetd.mqtt import storage
from fleetd.store.database import Store


def test_a_batch_is_claimed_once_released_again_and_forgotten_after_its_time(store_backend: Store) -> None:
    store = store_backend
    assert store.write_sync(lambda c: storage.claim_batch(c, "dev_a", "b1", 100.0))
    assert not store.write_sync(lambda c: storage.claim_batch(c, "dev_a", "b1", 101.0))  # a redelivery
    assert store.write_sync(lambda c: storage.claim_batch(c, "dev_b", "b1", 101.0))  # ids are per device
    store.write_sync(lambda c: storage.release_batch(c, "dev_a", "b1"))  # its points failed to store
    assert store.write_sync(lambda c: storage.claim_batch(c, "dev_a", "b1", 200.0))
    assert store.write_sync(lambda c: storage.forget_batches(c, 150.0)) == 1  # dev_b's, older than 150
    assert store.write_sync(lambda c: storage.claim_batch(c, "dev_b", "b1", 201.0))
    assert not store.write_sync(lambda c: storage.claim_batch(c, "dev_a", "b1", 202.0))
