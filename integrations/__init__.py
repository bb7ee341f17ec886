"""Adapters that give voice-agent frameworks a face: LiveKit Agents (`integrations.livekit`) and Pipecat
(`integrations.pipecat`). Both are clients of the public `ditto.v1.Avatar` API through the SDK (`ditto_client`);
what they share (audio in, aligned video and audio out, interrupts, running on without a face) is
`integrations.core.AvatarBridge`."""
