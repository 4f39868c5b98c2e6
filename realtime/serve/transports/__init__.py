"""How frames reach a session: `ws` (binary WebSocket frames) and `webrtc` (aiortc media tracks)."""
