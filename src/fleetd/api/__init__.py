"""One module per RPC service: messages, decoding and the calls into the services below."""
