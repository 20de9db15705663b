-- MQTT telemetry batches already stored (issue 19, docs/mqtt.md): a device names each batch it publishes
-- (batch_id), and a QoS 1 redelivery of one that is here is acknowledged without storing its points again.
-- Kept for a day (the MQTT part deletes older rows), far longer than a broker holds a message unacknowledged.
CREATE TABLE mqtt_batches (
    device_id   TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (device_id, batch_id)
);
CREATE INDEX mqtt_batches_received ON mqtt_batches(received_at);
