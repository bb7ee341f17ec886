"""WebRTC gateway: browsers (and any WebRTC client) talk to an avatar over one peer connection.

A client of the orchestrator's public `ditto.v1.Avatar` API through the SDK (`ditto_client`), never of the bus:
it scales and fails like any other API client. Signalling is WHIP-style HTTP (POST an SDP offer, get the answer;
DELETE to hang up); the page at `/` is a plain HTML + JavaScript client of the same endpoints.
"""
