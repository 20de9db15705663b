"""MQTT transport (issue 19, docs/mqtt.md): the broker's configuration, fleetd as the broker's service client.

Imported only when MQTT is used (``mqtt_url`` set, ``fleetd mqtt ...``): aiomqtt and paho-mqtt stay out of a
server that polls over HTTPS only.
"""
